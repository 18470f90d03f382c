"""The Dockerfile (it cannot be built here, so it is read): a pinned base, dependencies only from
constraints.txt, a non-root numeric USER, a WORKDIR where the manifests expect the launch scripts,
and a .dockerignore that keeps history, data, runs and venvs out of the build context."""
from __future__ import annotations

import fnmatch
import importlib.metadata
import re
import shlex

from .manifests import IMAGE_ROOT, ROOT, UID, image_problems

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def ignored(path: str) -> bool:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    hit = False
    for p in patterns:
        neg = p.startswith("!")
        p = p.lstrip("!").rstrip("/")
        parts = path.split("/")
        if any(fnmatch.fnmatch("/".join(parts[:i]), p) or fnmatch.fnmatch(parts[i - 1], p.removeprefix("**/"))
               for i in range(1, len(parts) + 1) if p.startswith("**/") or i == 1 or "/" in p):
            hit = not neg
    return hit


def test_base_image_is_pinned():
    froms = [arg for op, arg in instructions() if op == "FROM"]
    assert len(froms) == 1
    assert image_problems(froms[0].split()[0]) == [], froms


def test_runs_as_the_non_root_user_of_the_manifests():
    users = [arg for op, arg in instructions() if op == "USER"]
    assert users and users[-1].split(":")[0] == str(UID) != "0"
    ops = [op for op, _ in instructions()]
    assert ops.index("USER") > max(i for i, op in enumerate(ops) if op == "RUN"), "nothing runs as root after USER"
    assert re.search(rf"useradd[^\n]*--uid {UID}", DOCKERFILE)


def test_workdir_holds_the_launch_scripts():
    assert [arg for op, arg in instructions() if op == "WORKDIR"] == [IMAGE_ROOT]
    copies = [shlex.split(arg) for op, arg in instructions() if op == "COPY"]
    assert ["launch/", "launch/"] in copies and ["pscv_dist/", "pscv_dist/"] in copies
    for args in copies:
        for src in args[:-1]:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            assert not ignored(src.rstrip("/")), f"COPY {src}: excluded by .dockerignore"


def test_every_pip_install_uses_the_constraints():
    runs = " && ".join(arg for op, arg in instructions() if op == "RUN")
    installs = [cmd for cmd in re.split(r"&&|;", runs) if re.search(r"\bpip\d?\s+install\b", cmd)]
    assert installs
    for cmd in installs:
        words = shlex.split(cmd)
        assert "-c" in words and words[words.index("-c") + 1] == "constraints.txt", cmd
        targets = [w for w in words[words.index("install") + 1:] if not w.startswith("-") and w != "constraints.txt"]
        assert all(t.startswith(".") for t in targets), f"only the project itself, its pins from constraints: {cmd}"


def test_the_project_pins_everything_it_requires():
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().split() if "==" in line)
    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
    pins = {norm(k): v for k, v in pins.items()}
    for req in importlib.metadata.requires("pscv-dist") or []:
        spec = req.split(";")[0].strip()
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s]+)", spec)
        assert m, f"unpinned requirement {spec}"
        assert pins.get(norm(m.group(1))) == m.group(3), f"{spec} differs from constraints.txt"


def test_dockerignore_keeps_the_context_clean():
    for path in (".git", ".venv", "data", "runs", "demo_out", "mlruns", "store.zarr", "pscv_dist/__pycache__",
                 "tests", ".pytest_cache", "pscv_dist.egg-info"):
        assert ignored(path), f"{path} would be sent to the build"
    for path in ("pscv_dist", "pscv_dist/data", "pscv_dist/configs/acdc.yaml", "launch", "tune", "setup.py",
                 "README.md", "constraints.txt"):
        assert not ignored(path), f"{path} is needed by the build"
