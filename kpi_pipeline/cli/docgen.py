"""Regenerates the settings table in README.md and `.env.example` from `config.Settings`.

Run `python -m kpi_pipeline.cli.docgen` after adding a setting; a test fails until you do.
"""

from __future__ import annotations

from pathlib import Path

from kpi_pipeline.config import describe_settings

ROOT = Path(__file__).resolve().parents[2]
START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def settings_table() -> str:
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for env, default, description in describe_settings():
        shown = f"`{default}`" if default else "(unset)"
        rows.append(f"| `{env}` | {shown} | {description.replace('|', '/')} |")
    return "\n".join(rows)


def env_example() -> str:
    lines = [
        "# kpi_pipeline settings (all optional). Copy to .env; Dagster and kpi-pipeline read it.",
        "# With no KPI_SALESFORCE_* credentials the embedded sandbox org is used.",
        "",
    ]
    for env, default, description in describe_settings():
        lines += [f"# {description}", f"# {env}={default}", ""]
    return "\n".join(lines)


def main() -> None:
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text()
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    readme_path.write_text(f"{head}{START}\n{settings_table()}\n{END}{tail}")
    (ROOT / ".env.example").write_text(env_example())


if __name__ == "__main__":
    main()
