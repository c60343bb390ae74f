"""The Docker images' version pins agree with README.md's version matrix and with pyproject.toml.

Dockerfile.ascend and Dockerfile.cuda cannot be built in this project's CI (no Docker, no accelerator),
so this test is what keeps them honest:

* every ``ARG <COMPONENT>_VERSION=...`` is the same string as the README's "Version matrix" cell (section
  "Docker images") for that component and image;
* every pinned package satisfies pyproject.toml's range for it (dependencies and every extra), and
  the image's Python satisfies ``requires-python``;
* the install lines pin each package with its ARG (``torch==${TORCH_VERSION}``), never a literal;
* each ARG is in scope where it is used (an ARG declared before ``FROM`` is empty after it unless it
  is declared again: ``torch==${TORCH_VERSION}`` would quietly become ``torch==``);
* the pairing rules of the Ascend stack hold: torch_npu X.Y.Z[.postN] goes with torch X.Y.Z, and
  vllm-ascend X.Y.Z[rcN] goes with vLLM X.Y.Z.

The checkers take text and return a list of problems (file, component, both values), so the negative
tests below can feed them a broken Dockerfile and see the problem reported.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
README_HEADING = "## Docker images"


@dataclass(frozen=True)
class Component:
    row: str  # the row name in README.md's version matrix
    arg: str  # the Dockerfile ARG that pins it
    package: str | None = None  # the PyPI name pinned with it, when it is a pip package


COMPONENTS = (
    Component("CANN", "CANN_VERSION"),
    Component("CUDA", "CUDA_VERSION"),
    Component("Python", "PYTHON_VERSION"),
    Component("torch", "TORCH_VERSION", "torch"),
    Component("torch_npu", "TORCH_NPU_VERSION", "torch-npu"),
    Component("vLLM", "VLLM_VERSION", "vllm"),
    Component("vllm-ascend", "VLLM_ASCEND_VERSION", "vllm-ascend"),
    Component("MindSpeed", "MINDSPEED_VERSION"),
    Component("triton-ascend", "TRITON_ASCEND_VERSION", "triton-ascend"),
    Component("triton", "TRITON_VERSION", "triton"),
    Component("DeepSpeed", "DEEPSPEED_VERSION", "deepspeed"),
    Component("Ray", "RAY_VERSION", "ray"),
    Component("transformers", "TRANSFORMERS_VERSION", "transformers"),
)
BY_ARG = {c.arg: c for c in COMPONENTS}
BY_ROW = {c.row: c for c in COMPONENTS}


@dataclass(frozen=True)
class Image:
    dockerfile: str
    column: str  # its column in the README matrix
    required_args: tuple[str, ...]


IMAGES = (
    Image(
        "Dockerfile.ascend",
        "Ascend image",
        ("CANN_VERSION", "PYTHON_VERSION", "TORCH_VERSION", "TORCH_NPU_VERSION", "VLLM_VERSION",
         "VLLM_ASCEND_VERSION", "MINDSPEED_VERSION", "TRITON_ASCEND_VERSION", "DEEPSPEED_VERSION",
         "RAY_VERSION", "TRANSFORMERS_VERSION"),
    ),
    Image(
        "Dockerfile.cuda",
        "CUDA image",
        ("CUDA_VERSION", "PYTHON_VERSION", "TORCH_VERSION", "TRITON_VERSION", "VLLM_VERSION",
         "DEEPSPEED_VERSION", "RAY_VERSION", "TRANSFORMERS_VERSION"),
    ),
)
# Components both images must pin (each to a version pyproject.toml accepts, not necessarily equal)
SHARED = ("PYTHON_VERSION", "TORCH_VERSION", "VLLM_VERSION", "DEEPSPEED_VERSION", "RAY_VERSION", "TRANSFORMERS_VERSION")
ABSENT = {"", "-", "—", "–", "n/a"}  # a matrix cell that says "not in this image"


# ------------------------------------------------------------------------------------------------
# parsing


@dataclass(frozen=True)
class Instruction:
    line: int  # first physical line, 1-based
    keyword: str  # upper case: FROM, ARG, RUN, ...
    body: str  # the rest, continuation lines joined, comments removed


def parse_instructions(text: str) -> list[Instruction]:
    """Dockerfile instructions with backslash continuations joined and comment lines dropped."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # a comment (also inside a continued instruction) or a blank line between instructions
        if not pending:
            start = number
        continued = stripped.endswith("\\")
        pending.append(stripped[:-1] if continued else stripped)
        if not continued:
            keyword, _, body = " ".join(pending).partition(" ")
            instructions.append(Instruction(start, keyword.upper(), body.strip()))
            pending = []
    if pending:
        keyword, _, body = " ".join(pending).partition(" ")
        instructions.append(Instruction(start, keyword.upper(), body.strip()))
    return instructions


def parse_dockerfile_args(text: str, source: str = "<Dockerfile>") -> dict[str, str]:
    """``ARG NAME=VALUE`` defaults by name. ``ARG NAME`` (no value) only brings an ARG into a stage.

    An ARG declared twice with two different values is an error: which one applies depends on the
    stage, and the README can show only one.
    """
    values: dict[str, str] = {}
    for instruction in parse_instructions(text):
        if instruction.keyword != "ARG" or "=" not in instruction.body:
            continue
        name, _, value = instruction.body.partition("=")
        name, value = name.strip(), value.strip().strip("\"'")
        if name in values and values[name] != value:
            raise ValueError(f"{source}:{instruction.line}: ARG {name} is declared as {values[name]!r} and as {value!r}")
        values[name] = value
    return values


def _cells(line: str) -> list[str]:
    return [cell.strip().strip("`").strip() for cell in line.strip().strip("|").split("|")]


def parse_version_matrix(markdown: str, heading: str = README_HEADING) -> dict[str, dict[str, str]]:
    """The version table in the section under ``heading``: {component: {column header: cell}}.

    The table is the first one in the section whose first header cell is ``component``; the section
    ends at the next heading of the same or a higher level. Backticks around cells are dropped.
    """
    lines = markdown.splitlines()
    level = len(heading) - len(heading.lstrip("#"))
    try:
        begin = next(i for i, line in enumerate(lines) if line.strip() == heading.strip())
    except StopIteration:
        raise ValueError(f"no heading {heading!r} in the markdown") from None
    end = next(
        (i for i in range(begin + 1, len(lines))
         if re.match(rf"#{{1,{level}}}\s", lines[i]) and not lines[i].startswith("#" * (level + 1))),
        len(lines),
    )
    section = lines[begin + 1:end]
    for i, line in enumerate(section[:-1]):
        if not line.lstrip().startswith("|") or _cells(line)[0].lower() != "component":
            continue
        if not re.fullmatch(r"\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?", section[i + 1].strip()):
            continue  # a header row must be followed by the |---|---| separator
        header = _cells(line)
        matrix: dict[str, dict[str, str]] = {}
        for row in section[i + 2:]:
            if not row.lstrip().startswith("|"):
                break
            cells = _cells(row)
            if cells[0] in matrix:
                raise ValueError(f"the version matrix lists {cells[0]!r} twice")
            matrix[cells[0]] = dict(zip(header[1:], cells[1:]))
        return matrix
    raise ValueError(f"no table with a 'component' column under {heading!r}")


def pyproject_requirements(pyproject: dict) -> dict[str, list[tuple[str, Requirement]]]:
    """Every requirement of pyproject.toml by canonical name, with where it comes from."""
    project = pyproject["project"]
    found: dict[str, list[tuple[str, Requirement]]] = defaultdict(list)
    for raw in project.get("dependencies", []):
        requirement = Requirement(raw)
        found[canonicalize_name(requirement.name)].append(("dependencies", requirement))
    for extra, requirements in project.get("optional-dependencies", {}).items():
        for raw in requirements:
            requirement = Requirement(raw)
            found[canonicalize_name(requirement.name)].append((f"extra [{extra}]", requirement))
    return dict(found)


# ------------------------------------------------------------------------------------------------
# checks: each returns a list of problems, empty when all is well


def check_against_matrix(dockerfile: str, column: str, args: dict[str, str], matrix: dict[str, dict[str, str]]) -> list[str]:
    """Each pinned component's ARG equals its matrix cell in ``column``, and the reverse."""
    problems = [
        f"README.md version matrix: row {row!r} is not a known component (known: {', '.join(BY_ROW)})"
        for row in matrix if row not in BY_ROW
    ]
    for component in COMPONENTS:
        value = args.get(component.arg)
        row = matrix.get(component.row)
        cell = None if row is None else row.get(column)
        if value is None:
            if cell is not None and cell not in ABSENT:
                problems.append(
                    f"{dockerfile}: {component.row}: README.md matrix ({column}) says {cell!r} "
                    f"but the Dockerfile has no ARG {component.arg}")
            continue
        if row is None:
            problems.append(f"{dockerfile}: {component.row}: ARG {component.arg}={value!r} but README.md's matrix has no {component.row!r} row")
        elif cell is None:
            problems.append(f"{dockerfile}: {component.row}: ARG {component.arg}={value!r} but README.md's matrix has no {column!r} column")
        elif cell != value:
            problems.append(f"{dockerfile}: {component.row}: ARG {component.arg}={value!r} but README.md matrix ({column}) says {cell!r}")
    return problems


def check_against_pyproject(dockerfile: str, args: dict[str, str], pyproject: dict) -> list[str]:
    """Each pinned package satisfies every range pyproject.toml gives it; Python satisfies requires-python.

    Markers are not evaluated: a pin must satisfy a range even where that extra would not install,
    which is stricter and keeps the check independent of the machine running it. Pre-releases count
    (an exact pin of an rc is deliberate), so ``>=0.8`` admits ``0.11.0rc1`` but ``>=3.2`` does not
    admit ``3.2.0rc4``.
    """
    problems: list[str] = []
    requirements = pyproject_requirements(pyproject)
    for component in COMPONENTS:
        value = args.get(component.arg)
        if value is None:
            continue
        if component.arg == "PYTHON_VERSION":
            ranges = [("requires-python", SpecifierSet(pyproject["project"].get("requires-python", "")))]
        elif component.package is not None:
            ranges = [(where, r.specifier) for where, r in requirements.get(canonicalize_name(component.package), [])]
        else:
            continue
        try:
            version = Version(value)
        except InvalidVersion:
            problems.append(f"{dockerfile}: {component.row}: ARG {component.arg}={value!r} is not a PEP 440 version")
            continue
        for where, specifier in ranges:
            if not specifier.contains(version, prereleases=True):
                problems.append(
                    f"{dockerfile}: {component.row}: ARG {component.arg}={value!r} does not satisfy "
                    f"pyproject.toml {where} {component.package or 'python'}{specifier}")
    return problems


_PIN = re.compile(
    r"(?<![\w.-])(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?=="
    r"(?P<value>\$\{[A-Za-z_]\w*\}|\$[A-Za-z_]\w*|[0-9][^\s\"',;)]*)"
)
_REF = re.compile(r"\$\{([A-Za-z_]\w*)[^}]*\}|\$([A-Za-z_]\w*)")


def check_install_lines(dockerfile: str, text: str) -> list[str]:
    """Install lines pin each package with its own ARG, never a literal; every ARG is used; FROM uses the base pins."""
    problems: list[str] = []
    instructions = parse_instructions(text)
    args = parse_dockerfile_args(text, dockerfile)
    pins: dict[str, list[tuple[int, str]]] = defaultdict(list)
    used: set[str] = set()
    for instruction in instructions:
        if instruction.keyword == "ARG":
            continue
        used.update(a or b for a, b in _REF.findall(instruction.body))
        if instruction.keyword == "RUN":
            for match in _PIN.finditer(instruction.body):
                pins[canonicalize_name(match["name"])].append((instruction.line, match["value"]))
    for component in COMPONENTS:
        if component.arg not in args:
            continue
        if component.arg not in used:
            problems.append(f"{dockerfile}: {component.row}: ARG {component.arg}={args[component.arg]!r} is declared but never used")
        if component.package is None:
            continue
        found = pins.get(canonicalize_name(component.package), [])
        wanted = {"${" + component.arg + "}", "$" + component.arg}
        if not any(value in wanted for _, value in found):
            problems.append(f"{dockerfile}: {component.row}: no install line pins {component.package}==${{{component.arg}}}")
        for line, value in found:
            if value not in wanted:
                problems.append(
                    f"{dockerfile}:{line}: {component.row}: pins {component.package}=={value} "
                    f"instead of {component.package}==${{{component.arg}}} (ARG {component.arg}={args[component.arg]!r})")
    froms = [i for i in instructions if i.keyword == "FROM"]
    for arg in ("CANN_VERSION", "CUDA_VERSION"):
        if arg in args and not any(re.search(rf"\$\{{?{arg}\b", i.body) for i in froms):
            problems.append(f"{dockerfile}: {BY_ARG[arg].row}: ARG {arg}={args[arg]!r} is not used in the FROM image tag")
    return problems


def check_arg_scope(dockerfile: str, text: str) -> list[str]:
    """Every use of a declared ARG is in its scope.

    ARGs before the first FROM are visible only to FROM lines. Inside a stage an ARG must be declared
    (``ARG NAME`` or ``ARG NAME=value``) before it is used, or it expands to an empty string.
    """
    problems: list[str] = []
    instructions = parse_instructions(text)
    declared_anywhere = {i.body.partition("=")[0].strip() for i in instructions if i.keyword == "ARG"}
    global_args: set[str] = set()
    stage_args: set[str] | None = None  # None before the first FROM
    for instruction in instructions:
        if instruction.keyword == "ARG":
            name = instruction.body.partition("=")[0].strip()
            (global_args if stage_args is None else stage_args).add(name)
            continue
        refs = {a or b for a, b in _REF.findall(instruction.body)} & declared_anywhere
        if instruction.keyword == "FROM":
            problems += [
                f"{dockerfile}:{instruction.line}: FROM uses ${{{ref}}}, which is not declared before the first FROM"
                for ref in sorted(refs - global_args)
            ]
            stage_args = set()
            continue
        scope = stage_args if stage_args is not None else set()
        problems += [
            f"{dockerfile}:{instruction.line}: {instruction.keyword} uses ${{{ref}}} outside its scope: declare "
            f"'ARG {ref}' in this stage before using it (an ARG from before FROM is empty here)"
            for ref in sorted(refs - scope)
        ]
    return problems


def check_pairings(dockerfile: str, args: dict[str, str]) -> list[str]:
    """The Ascend stack's naming rules: torch_npu follows torch's X.Y.Z, vllm-ascend follows vLLM's X.Y.Z."""
    problems: list[str] = []
    rules = (
        ("TORCH_NPU_VERSION", "TORCH_VERSION", lambda v: v.release[:3],
         "torch_npu X.Y.Z[.postN] is built for torch X.Y.Z (Ascend/pytorch version table)"),
        ("VLLM_ASCEND_VERSION", "VLLM_VERSION", lambda v: v.release[:3],
         "vllm-ascend X.Y.Z[rcN] is released for vLLM X.Y.Z (vllm-ascend versioning policy)"),
    )
    for arg, base_arg, key, why in rules:
        if arg not in args or base_arg not in args:
            continue
        try:
            matched = key(Version(args[arg])) == key(Version(args[base_arg]))
        except InvalidVersion:
            matched = False
        if not matched:
            problems.append(
                f"{dockerfile}: {BY_ARG[arg].row}: ARG {arg}={args[arg]!r} does not go with "
                f"ARG {base_arg}={args[base_arg]!r}: {why}")
    return problems


# ------------------------------------------------------------------------------------------------
# the real files


def _read(name: str) -> str:
    path = REPO / name
    assert path.is_file(), f"{name} is missing from the repository root"
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads(_read("pyproject.toml"))


@pytest.fixture(scope="module")
def matrix() -> dict[str, dict[str, str]]:
    try:
        return parse_version_matrix(_read("README.md"))
    except ValueError as e:
        problem = str(e)
    pytest.fail(f"README.md: {problem}. The '{README_HEADING}' section with its 'Version matrix' table is what "
                "this test compares the Dockerfiles' ARG pins with.", pytrace=False)


@pytest.mark.parametrize("image", IMAGES, ids=lambda image: image.dockerfile)
def test_dockerfile_pins_every_component_of_its_image(image):
    args = parse_dockerfile_args(_read(image.dockerfile), image.dockerfile)
    missing = [arg for arg in image.required_args if arg not in args]
    assert not missing, f"{image.dockerfile}: no ARG pin for {', '.join(missing)}"


@pytest.mark.parametrize("image", IMAGES, ids=lambda image: image.dockerfile)
def test_args_equal_the_readme_version_matrix(image, matrix):
    args = parse_dockerfile_args(_read(image.dockerfile), image.dockerfile)
    problems = check_against_matrix(image.dockerfile, image.column, args, matrix)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("image", IMAGES, ids=lambda image: image.dockerfile)
def test_pins_satisfy_pyproject(image, pyproject):
    args = parse_dockerfile_args(_read(image.dockerfile), image.dockerfile)
    problems = check_against_pyproject(image.dockerfile, args, pyproject)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("image", IMAGES, ids=lambda image: image.dockerfile)
def test_install_lines_use_the_args(image):
    problems = check_install_lines(image.dockerfile, _read(image.dockerfile))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("image", IMAGES, ids=lambda image: image.dockerfile)
def test_args_are_in_scope_where_used(image):
    problems = check_arg_scope(image.dockerfile, _read(image.dockerfile))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("image", IMAGES, ids=lambda image: image.dockerfile)
def test_stack_pairing_rules_hold(image):
    args = parse_dockerfile_args(_read(image.dockerfile), image.dockerfile)
    problems = check_pairings(image.dockerfile, args)
    assert not problems, "\n".join(problems)


def test_both_images_pin_the_shared_stack(pyproject):
    """transformers, Ray, DeepSpeed, torch, vLLM and Python are pinned in both images, each within pyproject's ranges."""
    problems = []
    for image in IMAGES:
        args = parse_dockerfile_args(_read(image.dockerfile), image.dockerfile)
        problems += [f"{image.dockerfile}: {BY_ARG[arg].row}: no ARG {arg}" for arg in SHARED if arg not in args]
        problems += check_against_pyproject(image.dockerfile, {a: args[a] for a in SHARED if a in args}, pyproject)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("image", IMAGES, ids=lambda image: image.dockerfile)
def test_image_installs_the_project_under_the_constraints_and_runs_doctor(image):
    instructions = parse_instructions(_read(image.dockerfile))
    project_installs = [i for i in instructions if i.keyword == "RUN" and "/opt/npu-retu[" in i.body]
    assert project_installs, f"{image.dockerfile}: no RUN installs /opt/npu-retu[...]"
    for install in project_installs:
        assert re.search(r"(^|\s)(-c|--constraint)[\s=]", install.body), (
            f"{image.dockerfile}:{install.line}: the project is installed without a constraints file (-c): "
            "pip could replace the pinned torch")
        extras = re.search(r"/opt/npu-retu\[([^\]]*)\]", install.body)[1].split(",")
        assert {"distributed", "test"} <= {e.strip() for e in extras}, f"{image.dockerfile}:{install.line}: extras {extras}"
    keywords = {(i.keyword, i.body) for i in instructions}
    assert ("WORKDIR", "/opt/npu-retu") in keywords, f"{image.dockerfile}: WORKDIR /opt/npu-retu is missing"
    assert ("CMD", '["npu-retu", "doctor"]') in keywords, f"{image.dockerfile}: CMD [\"npu-retu\", \"doctor\"] is missing"


def test_dockerignore_keeps_local_state_out_of_the_images():
    lines = {line.strip() for line in _read(".dockerignore").splitlines() if line.strip() and not line.startswith("#")}
    missing = {".git", ".venv", "runs", "**/__pycache__"} - lines
    assert not missing, f".dockerignore does not exclude {sorted(missing)}"
    assert "README.md" not in lines, ".dockerignore must keep README.md: pyproject.toml names it as the readme"


# ------------------------------------------------------------------------------------------------
# the parsers and checkers on small inline examples (each check must be able to fail)

MARKDOWN = """\
# Project

## Install

| component | note |
|---|---|
| torch | not this table: wrong section |

## Docker images

Some words.

### Version matrix

| component | Ascend image | CUDA image | source |
|:---|---|---:|---|
| torch | `2.7.1` | 2.8.0 | [link](https://example.org) |
| CANN | 8.3.rc1 | — | |

## Next section

| component | Ascend image | CUDA image |
|---|---|---|
| torch | 9.9.9 | 9.9.9 |
"""

DOCKERFILE = """\
ARG CANN_VERSION=8.3.rc1
FROM quay.io/ascend/cann:${CANN_VERSION}-910b
ARG TORCH_VERSION=2.7.1
ARG TRANSFORMERS_VERSION="4.57.1"
# a comment with torch==1.0.0 is not an install line
RUN printf '%s\\n' "torch==${TORCH_VERSION}" > /c.txt && \\
    pip install -c /c.txt \\
        "transformers==${TRANSFORMERS_VERSION}"
"""


def test_parse_version_matrix_reads_the_table_of_its_section():
    matrix = parse_version_matrix(MARKDOWN)
    assert matrix == {
        "torch": {"Ascend image": "2.7.1", "CUDA image": "2.8.0", "source": "[link](https://example.org)"},
        "CANN": {"Ascend image": "8.3.rc1", "CUDA image": "—", "source": ""},
    }


def test_parse_version_matrix_says_what_is_missing():
    with pytest.raises(ValueError, match="no heading '## Docker images'"):
        parse_version_matrix("# Project\n\n## Install\n")
    with pytest.raises(ValueError, match="no table with a 'component' column"):
        parse_version_matrix("## Docker images\n\ntext only\n\n## Next\n\n| component | x |\n|---|---|\n| a | 1 |\n")
    with pytest.raises(ValueError, match="lists 'torch' twice"):
        parse_version_matrix("## Docker images\n\n| component | A |\n|---|---|\n| torch | 1 |\n| torch | 2 |\n")


def test_parse_dockerfile_args_reads_defaults_and_rejects_conflicts():
    assert parse_dockerfile_args(DOCKERFILE) == {
        "CANN_VERSION": "8.3.rc1", "TORCH_VERSION": "2.7.1", "TRANSFORMERS_VERSION": "4.57.1"}
    # a value-less re-declaration only brings the ARG into the stage
    assert parse_dockerfile_args("ARG A=1\nFROM x\nARG A\n") == {"A": "1"}
    with pytest.raises(ValueError, match=r"f:3: ARG A is declared as '1' and as '2'"):
        parse_dockerfile_args("ARG A=1\nFROM x\nARG A=2\n", "f")


def test_parse_instructions_joins_continuations_and_drops_comments():
    runs = [i for i in parse_instructions(DOCKERFILE) if i.keyword == "RUN"]
    assert len(runs) == 1 and runs[0].line == 6
    assert "pip install -c /c.txt" in runs[0].body and "transformers==${TRANSFORMERS_VERSION}" in runs[0].body
    assert "1.0.0" not in " ".join(i.body for i in parse_instructions(DOCKERFILE))


def test_a_mismatched_version_is_reported_with_file_component_and_both_values():
    matrix = {"torch": {"Ascend image": "2.7.1"}, "CANN": {"Ascend image": "8.3.rc1"},
              "transformers": {"Ascend image": "4.57.1"}}
    args = parse_dockerfile_args(DOCKERFILE)
    assert check_against_matrix("Dockerfile.ascend", "Ascend image", args, matrix) == []

    broken = DOCKERFILE.replace("TORCH_VERSION=2.7.1", "TORCH_VERSION=2.6.0")
    problems = check_against_matrix("Dockerfile.ascend", "Ascend image", parse_dockerfile_args(broken), matrix)
    assert problems == ["Dockerfile.ascend: torch: ARG TORCH_VERSION='2.6.0' but README.md matrix (Ascend image) says '2.7.1'"]


def test_matrix_and_dockerfile_must_list_the_same_components():
    args = {"TORCH_VERSION": "2.7.1"}
    problems = check_against_matrix("Dockerfile.x", "Ascend image", args, {
        "torch": {"Ascend image": "2.7.1"},
        "Ray": {"Ascend image": "2.50.0"},  # in the README, not pinned by the Dockerfile
        "Torch-NPU": {"Ascend image": "2.7.1"},  # a row the test does not know
    })
    assert any("row 'Torch-NPU' is not a known component" in p for p in problems)
    assert any("Ray: README.md matrix (Ascend image) says '2.50.0' but the Dockerfile has no ARG RAY_VERSION" in p for p in problems)
    problems = check_against_matrix("Dockerfile.x", "Ascend image", {"RAY_VERSION": "2.50.0"}, {"Ray": {"CUDA image": "2.50.0"}})
    assert problems == ["Dockerfile.x: Ray: ARG RAY_VERSION='2.50.0' but README.md's matrix has no 'Ascend image' column"]
    assert check_against_matrix("Dockerfile.x", "Ascend image", {}, {"Ray": {"Ascend image": "—"}}) == []


def test_a_pin_outside_pyproject_range_is_reported():
    pyproject = {"project": {
        "requires-python": ">=3.10",
        "dependencies": ["transformers>=4.51"],
        "optional-dependencies": {"ascend": ["triton-ascend>=3.2", "vllm-ascend>=0.8"]},
    }}
    good = {"TRANSFORMERS_VERSION": "4.57.1", "VLLM_ASCEND_VERSION": "0.11.0rc1", "PYTHON_VERSION": "3.11",
            "TRITON_ASCEND_VERSION": "3.2.0", "MINDSPEED_VERSION": "2.2.0_core_r0.12.1"}
    assert check_against_pyproject("Dockerfile.ascend", good, pyproject) == []
    bad = good | {"TRANSFORMERS_VERSION": "4.40.0", "TRITON_ASCEND_VERSION": "3.2.0rc4", "PYTHON_VERSION": "3.9"}
    assert sorted(check_against_pyproject("Dockerfile.ascend", bad, pyproject)) == sorted([
        "Dockerfile.ascend: transformers: ARG TRANSFORMERS_VERSION='4.40.0' does not satisfy "
        "pyproject.toml dependencies transformers>=4.51",
        "Dockerfile.ascend: triton-ascend: ARG TRITON_ASCEND_VERSION='3.2.0rc4' does not satisfy "
        "pyproject.toml extra [ascend] triton-ascend>=3.2",
        "Dockerfile.ascend: Python: ARG PYTHON_VERSION='3.9' does not satisfy pyproject.toml requires-python python>=3.10",
    ])
    assert check_against_pyproject("D", {"TORCH_VERSION": "two"}, pyproject) == [
        "D: torch: ARG TORCH_VERSION='two' is not a PEP 440 version"]


def test_install_lines_that_bypass_the_args_are_reported():
    assert check_install_lines("Dockerfile.ascend", DOCKERFILE) == []

    literal = DOCKERFILE.replace('"transformers==${TRANSFORMERS_VERSION}"', '"transformers==4.57.1"')
    problems = check_install_lines("Dockerfile.ascend", literal)
    assert "Dockerfile.ascend: transformers: no install line pins transformers==${TRANSFORMERS_VERSION}" in problems
    assert ("Dockerfile.ascend:6: transformers: pins transformers==4.57.1 instead of "
            "transformers==${TRANSFORMERS_VERSION} (ARG TRANSFORMERS_VERSION='4.57.1')") in problems
    assert "Dockerfile.ascend: transformers: ARG TRANSFORMERS_VERSION='4.57.1' is declared but never used" in problems

    wrong_arg = DOCKERFILE.replace('"transformers==${TRANSFORMERS_VERSION}"', '"transformers==${TORCH_VERSION}"')
    assert any("pins transformers==${TORCH_VERSION} instead of" in p for p in check_install_lines("D", wrong_arg))

    untagged = DOCKERFILE.replace("cann:${CANN_VERSION}-910b", "cann:8.3.rc1-910b")
    assert "D: CANN: ARG CANN_VERSION='8.3.rc1' is not used in the FROM image tag" in check_install_lines("D", untagged)

    # extras and underscores name the same package: ray[default]==, torch_npu==
    extras = "ARG RAY_VERSION=2.50.0\nARG TORCH_NPU_VERSION=2.7.1\nFROM x\nARG RAY_VERSION\nARG TORCH_NPU_VERSION\n" \
             'RUN pip install "ray[default]==${RAY_VERSION}" torch_npu==$TORCH_NPU_VERSION\n'
    assert check_install_lines("D", extras) == []


def test_an_arg_used_outside_its_scope_is_reported():
    assert check_arg_scope("D", DOCKERFILE) == []
    # TORCH_VERSION declared only before FROM: empty in the RUN, so the pin would read torch==
    hoisted = "ARG TORCH_VERSION=2.7.1\nFROM x\nRUN pip install torch==${TORCH_VERSION}\n"
    assert check_arg_scope("D", hoisted) == [
        "D:3: RUN uses ${TORCH_VERSION} outside its scope: declare 'ARG TORCH_VERSION' in this stage "
        "before using it (an ARG from before FROM is empty here)"]
    assert check_arg_scope("D", hoisted.replace("FROM x\n", "FROM x\nARG TORCH_VERSION\n")) == []
    late_base = "FROM cann:${CANN_VERSION}\nARG CANN_VERSION=8.3.rc1\nRUN echo ${CANN_VERSION}\n"
    assert check_arg_scope("D", late_base) == ["D:1: FROM uses ${CANN_VERSION}, which is not declared before the first FROM"]
    # shell variables that are not ARGs are the shell's business
    assert check_arg_scope("D", "FROM x\nRUN echo ${HOME} $ARCH\n") == []


def test_unpaired_ascend_versions_are_reported():
    good = {"TORCH_VERSION": "2.7.1", "TORCH_NPU_VERSION": "2.7.1.post1", "VLLM_VERSION": "0.11.0", "VLLM_ASCEND_VERSION": "0.11.0rc1"}
    assert check_pairings("Dockerfile.ascend", good) == []
    problems = check_pairings("Dockerfile.ascend", good | {"TORCH_NPU_VERSION": "2.8.0", "VLLM_ASCEND_VERSION": "0.13.0"})
    assert problems == [
        "Dockerfile.ascend: torch_npu: ARG TORCH_NPU_VERSION='2.8.0' does not go with ARG TORCH_VERSION='2.7.1': "
        "torch_npu X.Y.Z[.postN] is built for torch X.Y.Z (Ascend/pytorch version table)",
        "Dockerfile.ascend: vllm-ascend: ARG VLLM_ASCEND_VERSION='0.13.0' does not go with ARG VLLM_VERSION='0.11.0': "
        "vllm-ascend X.Y.Z[rcN] is released for vLLM X.Y.Z (vllm-ascend versioning policy)",
    ]
