"""Docs that users rely on stay true to the code."""

from pathlib import Path

from kpi_pipeline.config import describe_settings

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_in_the_readme_and_env_example():
    readme = (ROOT / "README.md").read_text()
    env_example = (ROOT / ".env.example").read_text()
    missing_readme = [env for env, _, _ in describe_settings() if f"`{env}`" not in readme]
    missing_example = [env for env, _, _ in describe_settings() if f"{env}=" not in env_example]
    assert not missing_readme, (
        f"README.md lacks {missing_readme}: run `python -m kpi_pipeline.cli.docgen`"
    )
    assert not missing_example, (
        f".env.example lacks {missing_example}: run `python -m kpi_pipeline.cli.docgen`"
    )


def test_readme_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()
    assert [line.split()[0:2] for line in first_block] == [["make", "dev"], ["make", "test"]]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_dagster_pins_move_in_lockstep():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"dagster==1.13.27"' in pyproject
    assert '"dagster-webserver==1.13.27"' in pyproject
    assert '"dagster-postgres==0.29.27"' in pyproject
    assert "[tool.dagster]" not in pyproject, "a [tool.dagster] block would shadow workspace.yaml"


def test_installed_dagster_libraries_are_the_lockstep_versions():
    import dagster
    import dagster_postgres
    import dagster_webserver

    assert dagster.__version__ == "1.13.27"
    assert dagster_webserver.__version__ == "1.13.27"
    assert dagster_postgres.__version__ == "0.29.27"
