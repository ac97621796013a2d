"""The project's install story: setup.cfg, environment.yml, README and CI agree."""

from __future__ import annotations

import configparser
import re

import pytest

from tests.helpers import REPO, run_fresh_python


def _setup_cfg_requirements() -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    lines = parser["options"]["install_requires"].splitlines()
    return sorted(line.strip() for line in lines if line.strip() and not line.strip().startswith("#"))


def _environment_yml_requirements() -> list[str]:
    text = (REPO / "environment.yml").read_text()
    pip_block = text.split("- pip:", 1)[1].split("variables:", 1)[0]
    items = [line.strip()[2:].strip() for line in pip_block.splitlines() if line.strip().startswith("- ")]
    return sorted(i for i in items if not i.startswith("-e"))


def test_environment_yml_lists_the_same_runtime_requirements_as_setup_cfg():
    assert _environment_yml_requirements() == _setup_cfg_requirements()
    assert "crypten==0.4.1" in _setup_cfg_requirements()


def test_torch_bounds_admit_the_on_disk_pair_and_nothing_newer():
    reqs = _setup_cfg_requirements()
    assert "torch>=2.9,<=2.14.1" in reqs and "torchvision>=0.24,<=0.29.1" in reqs


def _readme_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    return [b.strip() for b in blocks if "python3 -m venv .venv" in b]


def test_ci_runs_exactly_the_readme_install_and_test_command():
    install_and_demo, install_and_test = _readme_commands()[:2]
    assert install_and_demo.endswith("&& pricure demo")
    assert install_and_test.endswith("&& python -m pytest")
    ci = (REPO / ".ci" / "run").read_text()
    for step in install_and_test.split(" && "):
        assert step in ci, step
    assert install_and_demo.split(" && ")[:-1] == install_and_test.split(" && ")[:-1]


@pytest.mark.mpc
def test_readme_python_example_runs():
    readme = (REPO / "README.md").read_text()
    example = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "PrivateEnsemble(" in b)
    script = example.replace('if __name__ == "__main__":', "if True:") + (
        "\nimport json\nprint(json.dumps({'labels': len(prediction.labels), 'reveals': prediction.cost.reveals,"
        " 'decodes': prediction.cost.server_decodes}))\n"
    )
    assert run_fresh_python(script) == {"labels": 8, "reveals": 1, "decodes": 0}
