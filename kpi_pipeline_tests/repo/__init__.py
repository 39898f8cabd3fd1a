"""Tests of repository artefacts that are not Python modules: the Salesforce metadata under sf/ and the
Grafana dashboard under observability/. (The docs are checked by test_docs_in_step.py at the root.)"""
