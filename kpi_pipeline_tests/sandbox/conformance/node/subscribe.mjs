// Drives the npm package salesforce-pubsub-api-client (not written by this project) against a
// Pub/Sub API endpoint and prints what it decoded, one JSON object per line:
//   {"replayId": 12, "schemaId": "...", "id": "...", "payload": {...}}
// The client fetches each schema with GetSchema and decodes with its own avro-js. BigInt
// values (Avro longs past 2^53) are printed as strings.
//
// Usage: node subscribe.mjs TOPIC COUNT [REPLAY_ID]
//   without REPLAY_ID: subscribeFromEarliestEvent; with it: subscribeFromReplayId (after it).
// Environment: PUBSUB_ENDPOINT (host:port), ACCESS_TOKEN, INSTANCE_URL (https://...),
// ORGANIZATION_ID.
import PubSubApiClient from "salesforce-pubsub-api-client";

const [topic, countText, replayIdText] = process.argv.slice(2);
const count = Number.parseInt(countText, 10);
if (!topic || !Number.isSafeInteger(count) || count < 1) {
  console.error("usage: node subscribe.mjs TOPIC COUNT [REPLAY_ID]");
  process.exit(2);
}

const quiet = { debug() {}, info() {}, warn: console.error, error: console.error };
const client = new PubSubApiClient(
  {
    authType: "user-supplied",
    accessToken: process.env.ACCESS_TOKEN,
    instanceUrl: process.env.INSTANCE_URL,
    organizationId: process.env.ORGANIZATION_ID,
    pubSubEndpoint: process.env.PUBSUB_ENDPOINT,
    // The client pins its own bundled CA file and has no setting for another one, so the
    // sandbox's CA cannot be added; this is the client's own switch for a private CA. TLS is
    // still negotiated (a plaintext server fails the handshake).
    rejectUnauthorizedSsl: false,
  },
  quiet,
);

const timer = setTimeout(() => {
  console.error(`timed out waiting for ${count} events on ${topic}`);
  process.exit(3);
}, 60_000);

const received = [];
function done(code) {
  clearTimeout(timer);
  client.close();
  const lines = received.map(
    (event) => `${JSON.stringify(event, (_k, v) => (typeof v === "bigint" ? v.toString() : v))}\n`,
  );
  // Exit only once the lines are written: on a pipe, stdout writes past its buffer are
  // asynchronous, and process.exit() right after console.log cut the output short (seen on a
  // loaded machine: 10 of 51 events missing, exit code 0).
  process.stdout.write(lines.join(""), () => process.exit(code));
}

function onEvent(_subscription, callbackType, data) {
  if (callbackType === "event") {
    received.push(data);
  } else if (callbackType === "lastEvent") {
    done(0);
  } else if (callbackType === "error") {
    console.error(`client error: ${data?.stack || data?.message || JSON.stringify(data)}`);
    done(1);
  } else if (callbackType === "end") {
    console.error(`stream ended after ${received.length} of ${count} events`);
    done(1);
  }
}

await client.connect();
if (replayIdText === undefined) {
  client.subscribeFromEarliestEvent(topic, onEvent, count);
} else {
  client.subscribeFromReplayId(topic, onEvent, count, Number.parseInt(replayIdText, 10));
}
