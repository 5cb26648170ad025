"""The notebooks' Colab cells, run as Colab would run them, with no network and no Colab.

Each notebook tags its setup cell ``colab-setup`` (clone ``REPO_URL``, install what Colab lacks) and its GPU check
``colab-gpu-check``. A test executes the tagged cell in a fresh Python process (this session has imported torch
already, so only a fresh one can tell whether the cell imports it), from a temporary folder, with:

- a fake ``google.colab`` package first on ``sys.path``, so ``importlib.util.find_spec("google.colab")`` finds it;
- ``subprocess`` stubbed: every command is recorded; ``git clone`` makes a folder with ``cifar_s12/`` and the repo's
  ``requirements.txt`` (or exits 128, as git does for a missing repository); pip changes nothing unless told to;
- ``socket.socket.connect`` refused, so any attempt at the network fails loudly.
"""
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REPO_URL = "https://github.com/cifar-s12/cifar-s12"

DRIVER = r'''
import contextlib, io, json, os, shutil, socket, subprocess, sys
from pathlib import Path

config = json.loads(Path(sys.argv[1]).read_text())
result = {"commands": [], "pip_files": {}, "other_processes": []}


def refuse_network(*args, **kwargs):
    raise AssertionError(f"the cell tried to reach the network: {args}")


socket.socket.connect = socket.socket.connect_ex = refuse_network
for name in [m for m in sys.modules if m == "google" or m.startswith("google.")]:
    del sys.modules[name]
if config["colab"]:
    fake = Path(config["fake_root"])
    (fake / "google" / "colab").mkdir(parents=True, exist_ok=True)
    (fake / "google" / "__init__.py").write_text("")
    (fake / "google" / "colab" / "__init__.py").write_text("")
    sys.path.insert(0, str(fake))

if config.get("loaded_dist"):  # an installed, already imported distribution that the stubbed pip upgrades
    site = Path(config["fake_site"])
    (site / "colabfake").mkdir(parents=True, exist_ok=True)
    (site / "colabfake" / "__init__.py").write_text("")
    (site / "colabfake-1.0.dist-info").mkdir(exist_ok=True)
    (site / "colabfake-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: colabfake\nVersion: 1.0\n")
    (site / "colabfake-1.0.dist-info" / "top_level.txt").write_text("colabfake\n")
    sys.path.append(str(site))
    import colabfake  # noqa: F401


def fake_run(cmd, *args, **kwargs):
    cmd = [str(c) for c in cmd] if isinstance(cmd, (list, tuple)) else cmd
    result["commands"].append(cmd)
    if isinstance(cmd, list) and cmd[:2] == ["git", "clone"]:
        dest = Path(cmd[-1])
        if config["clone"] == "fail":
            return subprocess.CompletedProcess(cmd, 128, "", f"fatal: repository '{cmd[-2]}/' not found\n")
        dest.mkdir(parents=True)
        if config["clone"] == "ok":
            (dest / "cifar_s12").mkdir()
            (dest / "cifar_s12" / "__init__.py").write_text("")
            for name, text in config["repo_files"].items():
                (dest / name).write_text(text)
        else:  # "other": a repository, but not this course's
            (dest / "README.md").write_text("something else\n")
        return subprocess.CompletedProcess(cmd, 0, "", "")
    if isinstance(cmd, list) and cmd[1:4] == ["-m", "pip", "install"]:
        result["pip_cwd"] = os.path.abspath(kwargs.get("cwd") or ".")
        for flag in ("-r", "-c"):
            if flag in cmd:
                result["pip_files"][flag] = (Path(result["pip_cwd"]) / cmd[cmd.index(flag) + 1]).read_text()
        if config.get("loaded_dist"):
            old = Path(config["fake_site"]) / "colabfake-1.0.dist-info"
            new = old.with_name("colabfake-2.0.dist-info")
            old.rename(new)
            (new / "METADATA").write_text("Metadata-Version: 2.1\nName: colabfake\nVersion: 2.0\n")
        return subprocess.CompletedProcess(cmd, config.get("pip_rc", 0), "", "ERROR: no network\n")
    if isinstance(cmd, list) and cmd[0] == "nvidia-smi":
        return subprocess.CompletedProcess(cmd, 0, "Tesla T4\n", "")
    return subprocess.CompletedProcess(cmd, 1, "", "unexpected command\n")


def fake_call(cmd, *args, **kwargs):
    return fake_run(cmd).returncode


def fake_check_call(cmd, *args, **kwargs):
    done = fake_run(cmd)
    if done.returncode:
        raise subprocess.CalledProcessError(done.returncode, cmd)
    return 0


real_popen = subprocess.Popen


def fake_popen(cmd, *args, **kwargs):  # what an import may start (ctypes runs ldconfig): local, recorded, let through
    words = [str(c) for c in cmd] if isinstance(cmd, (list, tuple)) else str(cmd).split()
    if {"git", "pip", "pip3", "curl", "wget", "nvidia-smi"} & {os.path.basename(w) for w in words}:
        raise AssertionError(f"the cell started {cmd} past the stubs")
    result["other_processes"].append(words)
    return real_popen(cmd, *args, **kwargs)


def fake_system(cmd):
    result["commands"].append(cmd)
    return 1


subprocess.run, subprocess.call, subprocess.check_call = fake_run, fake_call, fake_check_call
subprocess.check_output = lambda cmd, *a, **k: fake_run(cmd).stdout
subprocess.Popen, os.system = fake_popen, fake_system
real_which = shutil.which
shutil.which = lambda name, *a, **k: ("/usr/bin/nvidia-smi" if config.get("gpu") else None) if name == "nvidia-smi" \
    else real_which(name, *a, **k)

result["torch_before"] = "torch" in sys.modules
path_before = list(sys.path)
out = io.StringIO()
namespace = {"__name__": "__main__"}
try:
    with contextlib.redirect_stdout(out):
        exec(compile(Path(config["cell"]).read_text(), "<colab cell>", "exec"), namespace)
    result["raised"] = None
except BaseException as error:  # SystemExit included: that is how the cell stops
    result["raised"], result["message"] = type(error).__name__, str(error)
result["stdout"] = out.getvalue()
result["torch_after"] = "torch" in sys.modules
added = len(sys.path) - len(path_before)  # what the cell put in front of sys.path
result["path_added"] = sys.path[:added] if sys.path[added:] == path_before else ["<sys.path changed otherwise>"]
result["cwd"] = os.getcwd()
result["REPO"] = namespace.get("REPO")
result["REPO_URL"] = namespace.get("REPO_URL")
Path(config["result"]).write_text(json.dumps(result))
'''


def tagged_source(notebook: Path, tag: str) -> str:
    cells = [c for c in json.loads(notebook.read_text())["cells"] if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1 and cells[0]["cell_type"] == "code", f"{notebook.name}: one code cell tagged {tag}"
    return "".join(cells[0]["source"])


def run_cell(tmp_path: Path, source: str, workdir: Path, **config) -> dict:
    """Execute ``source`` in a fresh Python from ``workdir`` with the stubs above; what it did, as a dict."""
    (tmp_path / "driver.py").write_text(DRIVER)
    (tmp_path / "cell.py").write_text(source)
    result = tmp_path / "result.json"
    result.unlink(missing_ok=True)
    config = {"colab": True, "clone": "ok", "cell": str(tmp_path / "cell.py"), "result": str(result),
              "fake_root": str(tmp_path / "fake_colab"), "fake_site": str(tmp_path / "fake_site"),
              "repo_files": {name: (ROOT / name).read_text() for name in ("requirements.txt", "pyproject.toml")
                             if (ROOT / name).exists()}, **config}
    (tmp_path / "config.json").write_text(json.dumps(config))
    workdir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "config.json")], cwd=workdir,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and result.exists(), done.stdout + done.stderr
    return json.loads(result.read_text())


def git_clones(commands: list) -> list:
    return [c for c in commands
            if (isinstance(c, str) and "git clone" in c) or (isinstance(c, list) and c[:2] == ["git", "clone"])]


def pip_installs(commands: list) -> list:
    return [c for c in commands if "pip" in " ".join(c if isinstance(c, list) else [c])]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_repository_address_is_written_once_at_the_top_of_the_setup_cell(notebook):
    source = tagged_source(notebook, "colab-setup")
    code = [line for line in source.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert code[0] == f'REPO_URL = "{REPO_URL}"'
    assert "fork" in source.splitlines()[0] and "REPO_URL" in source.splitlines()[0]  # the comment just above it
    cells = "".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"])
    assert cells.count("github.com/cifar-s12/cifar-s12") == 1
    colab_cells = source + tagged_source(notebook, "colab-gpu-check")
    assert "run this cell again" not in colab_cells.lower()  # (the training cell says it rightly: it continues a run)
    assert not [line for line in source.splitlines() if line.lstrip().startswith(("!", "%"))]  # plain Python


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_on_colab_the_clone_and_install_keep_colabs_torch_and_a_second_run_clones_nothing(notebook, tmp_path):
    source, content = tagged_source(notebook, "colab-setup"), tmp_path / "content"
    first = run_cell(tmp_path, source, content)
    assert first["raised"] is None, first
    assert first["REPO_URL"] == REPO_URL
    (clone,) = git_clones(first["commands"])
    assert REPO_URL in clone
    (pip,) = pip_installs(first["commands"])
    assert pip[:4] == [sys.executable, "-m", "pip", "install"]  # into the kernel's own Python
    # The clone's requirements.txt, from the clone (its "-e ." is the clone), never naming torch nor upgrading ...
    assert first["pip_cwd"] == str(content / "cifar-s12")
    assert first["pip_files"]["-r"] == (ROOT / "requirements.txt").read_text()
    assert not {"torch", "torchvision"} & {re.match(r"[\w.-]*", arg)[0].lower() for arg in pip}
    assert not {"-U", "--upgrade", "--force-reinstall", "--ignore-installed", "-I"} & set(pip)
    # ... with Colab's own torch and torchvision held as installed: neither the list nor a dependency replaces them.
    pinned = set(first["pip_files"]["-c"].split())
    assert pinned == {f"{name}=={importlib.metadata.version(name)}" for name in ("torch", "torchvision")}
    assert first["torch_before"] is False and first["torch_after"] is False, "the cell imported torch"
    assert "Restart session" not in first["stdout"]  # nothing already loaded changed
    # What the later cells need: Path(REPO) from the working folder, and the package importable.
    assert first["REPO"] == "cifar-s12" and first["cwd"] == str(content)
    assert first["path_added"][:1] == [str(content / "cifar-s12")]
    assert (content / "cifar-s12" / "cifar_s12" / "__init__.py").exists()

    again = run_cell(tmp_path, source, content)
    assert again["raised"] is None, again
    assert git_clones(again["commands"]) == [] and pip_installs(again["commands"]) == []
    assert again["path_added"][:1] == [str(content / "cifar-s12")]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_after_a_failed_install_a_second_run_installs_again_without_cloning(notebook, tmp_path):
    source, content = tagged_source(notebook, "colab-setup"), tmp_path / "content"
    failed = run_cell(tmp_path, source, content, pip_rc=1)
    assert failed["raised"] == "SystemExit" and "pip" in failed["message"]
    assert "run this cell again" not in failed["message"].lower()
    retried = run_cell(tmp_path, source, content)
    assert retried["raised"] is None, retried
    assert git_clones(retried["commands"]) == [] and len(pip_installs(retried["commands"])) == 1


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
@pytest.mark.parametrize("clone", ["fail", "other"])
def test_a_clone_that_fails_stops_the_cell_naming_repo_url(notebook, clone, tmp_path):
    content = tmp_path / "content"
    result = run_cell(tmp_path, tagged_source(notebook, "colab-setup"), content, clone=clone)
    assert result["raised"] == "SystemExit", result
    message = result["message"]
    assert "REPO_URL" in message and REPO_URL in message and "fork" in message
    assert "\n" not in message and "Traceback" not in message  # one readable line
    assert "run this cell again" not in message.lower()
    assert pip_installs(result["commands"]) == [] and result["path_added"] == []
    assert result["torch_after"] is False
    if clone == "fail":
        assert "not found" in message  # git's own reason, its last line
    else:  # the folder is left behind: the next run says what to do rather than clone over it
        again = run_cell(tmp_path, tagged_source(notebook, "colab-setup"), content)
        assert again["raised"] == "SystemExit" and "REPO_URL" in again["message"] and "rm -rf" in again["message"]
        assert git_clones(again["commands"]) == []


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_loaded_package_that_the_install_changed_asks_for_a_restart(notebook, tmp_path):
    result = run_cell(tmp_path, tagged_source(notebook, "colab-setup"), tmp_path / "content", loaded_dist=True)
    assert result["raised"] is None, result
    assert "colabfake" in result["stdout"] and "Runtime > Restart session" in result["stdout"]
    assert "from the top" in result["stdout"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_outside_colab_the_setup_cell_runs_nothing_and_finds_the_package_one_folder_up(notebook, tmp_path):
    result = run_cell(tmp_path, tagged_source(notebook, "colab-setup"), tmp_path / "notebooks", colab=False)
    assert result["raised"] is None, result
    assert result["commands"] == [] and result["other_processes"] == [] and result["stdout"] == ""
    assert result["REPO"] == ".." and result["path_added"][:1] == [str(tmp_path)]
    assert result["torch_after"] is False
    assert not (tmp_path / "notebooks" / "cifar-s12").exists()


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
@pytest.mark.parametrize("gpu", [True, False], ids=["gpu", "no-gpu"])
def test_the_gpu_check_asks_nvidia_smi_not_torch(notebook, gpu, tmp_path):
    source = tagged_source(notebook, "colab-gpu-check")
    result = run_cell(tmp_path, source, tmp_path / "content", gpu=gpu)
    assert result["raised"] is None, result
    assert result["torch_after"] is False, "the GPU check imported torch before the install"
    if gpu:
        assert result["stdout"] == "GPU: Tesla T4\n"
    else:
        assert result["stdout"].startswith("No GPU") and "Runtime > Change runtime type" in result["stdout"]
    outside = run_cell(tmp_path, source, tmp_path / "notebooks", colab=False, gpu=gpu)
    assert outside["raised"] is None and outside["commands"] == [] and outside["stdout"] == ""


def test_the_gpu_check_and_the_setup_are_the_first_code_cells_and_import_no_torch():
    for notebook in NOTEBOOKS:
        cells = json.loads(notebook.read_text())["cells"]
        code = [c for c in cells if c["cell_type"] == "code"]
        tags = [c.get("metadata", {}).get("tags", []) for c in code]
        assert "colab-gpu-check" in tags[0] and "colab-setup" in tags[1], notebook.name
        assert "import torch" not in "".join(code[0]["source"]) + "".join(code[1]["source"])
