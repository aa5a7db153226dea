"""The house's rules, read from the source: imports run one way (kernels -> images -> ... -> command lines),
the benchmarks import nothing from tests/, functions stay short, and the registries of attention variants
and backends are what config validation, the generator and the benchmarks accept."""
import ast
import re
from pathlib import Path

import pytest
import torch

from mhtma_kernels.ops import BACKENDS
from mhtma_model.config import ConfigError, load_config
from mhtma_model.networks import ATTENTION_VARIANTS, ATTENTIONS, KERNEL_BACKENDS, InpaintGenerator

REPO = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80

#: mhtma_model's modules by floor (docs/layout.md): a module imports only modules on lower floors.
FLOORS = {
    "pixel_range": -2,  # the one mapping between 8-bit pixels and the network's range
    "output_files": -2,  # output checks and atomic writes with the umask, for every writer
    "progress": -2,  # progress bars on a terminal, plain lines otherwise
    "weights_files": -1,  # the weights-file rule that floor-0 metrics share
    "deep_colour": -2,  # 16-bit colour, which image_modes keeps
    "image_modes": -1,  # the picture-mode rules that images (floor 0) reads with
    "images": 0, "device": 0, "precision": 0, "metrics": 0, "fid": 0, "classical": 0,
    "lpips_metric": 0, "ids": 0, "pinned_backend": 0,
    "masks": 1, "sketch": 1, "input_files": 1, "evaluator": 1,
    "data": 2,
    "networks": 3,
    "losses": 4, "onnx_export": 4, "samples": 4,
    "config": 5,
    "checkpoint": 6,
    "gan_step": 7, "inference": 7,
    "training": 8, "inpainter": 8,
    "cli": 9,  # the command lines (mhtma_model/cli/): a package, one floor
    # `python -m mhtma_model.<command>` entry points, each only a call of its command line's main
    "train": 10, "evaluate": 10, "inpaint": 10, "ui": 10, "export": 10, "mask_set": 10, "__main__": 10,
}


def _sources(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def _imported(path: Path) -> set[str]:
    """Fully qualified names that ``path`` imports (also inside functions), relative imports resolved."""
    here = path.relative_to(REPO).with_suffix("").parts[:-1]  # the package the file belongs to
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(here[:len(here) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
    return names


def _ids(paths):
    return [p.relative_to(REPO).as_posix() for p in paths]


@pytest.mark.parametrize("path", _sources("mhtma_kernels"), ids=_ids(_sources("mhtma_kernels")))
def test_kernels_never_import_the_model(path):
    assert not any(n.split(".")[0] == "mhtma_model" for n in _imported(path))


BENCH = _sources("benchmarks")


@pytest.mark.parametrize("path", BENCH, ids=_ids(BENCH))
def test_benchmarks_import_nothing_from_tests(path):
    assert not any(n.split(".")[0] == "tests" for n in _imported(path))


MODEL = [p for p in _sources("mhtma_model") if p.name != "__init__.py"]


def _floor(path: Path) -> int:
    return FLOORS[path.relative_to(REPO / "mhtma_model").parts[0].removesuffix(".py")]


@pytest.mark.parametrize("path", MODEL, ids=_ids(MODEL))
def test_model_imports_only_lower_floors(path):
    own = path.relative_to(REPO / "mhtma_model").parts[0].removesuffix(".py")
    upward = []
    for name in _imported(path):
        parts = name.split(".")
        if parts[0] != "mhtma_model" or len(parts) < 2 or parts[1] not in FLOORS or parts[1] == own:
            continue
        if FLOORS[parts[1]] >= _floor(path):
            upward.append(parts[1])
    assert not upward, f"{own} (floor {_floor(path)}) imports {sorted(set(upward))} on its floor or above"


def test_every_model_module_has_a_floor():
    assert {p.relative_to(REPO / "mhtma_model").parts[0].removesuffix(".py") for p in MODEL} <= set(FLOORS)


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(paths: list[Path]) -> dict[str, set[str]]:
    """{module: the project modules it imports (also inside functions)}: `from P import x` is an edge to
    the submodule P.x where there is one, else to P."""
    modules = {_module_name(p): p for p in paths}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                source = ".".join(base + ([node.module] if node.module else []))
                edges.update(f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every module that can reach itself through imports, with one such path."""
    circles = []
    for start in sorted(graph):
        paths, seen = [[start]], {start}
        while paths:
            path = paths.pop()
            for nxt in sorted(graph[path[-1]]):
                if nxt == start:
                    circles.append(path + [start])
                    paths = []
                    break
                if nxt not in seen:
                    seen.add(nxt)
                    paths.append(path + [nxt])
    return circles


def test_circle_finder_finds_a_module_imported_back():
    assert import_circles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b", "a"], ["b", "a", "b"]]
    assert import_circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    """No module imports one that imports it back (directly or through others), lazy imports included."""
    paths = _sources("mhtma_kernels") + _sources("mhtma_model") + _sources("benchmarks")
    assert not import_circles(import_graph(paths))


def _is_triton_kernel(node: ast.AST) -> bool:
    """A ``@triton.jit`` function (possibly under ``@triton.autotune`` / ``@triton.heuristics``)."""
    return any("jit" in ast.unparse(d) for d in node.decorator_list)


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """Functions of ``source`` longer than ``limit`` lines (``def`` to last line), Triton kernels aside."""
    return [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _is_triton_kernel(node)
            and node.end_lineno - node.lineno + 1 > limit]


def test_long_function_finder_counts_lines_and_spares_triton_kernels():
    def body(n):
        return "\n".join(f"    x{i} = {i}" for i in range(n))

    source = f"def short():\n{body(3)}\n\n@triton.jit\ndef kernel():\n{body(9)}\n\ndef long():\n{body(4)}\n"
    assert long_functions(source, limit=4) == ["long (5 lines)"]


@pytest.mark.parametrize("path", MODEL + _sources("mhtma_kernels"), ids=_ids(MODEL + _sources("mhtma_kernels")))
def test_functions_are_short(path):
    """No function over 80 lines in mhtma_model and mhtma_kernels (``@triton.jit`` kernels excepted)."""
    assert not long_functions(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------- registries

def test_backend_registry_is_the_kernels_list():
    assert KERNEL_BACKENDS == tuple(b for b in BACKENDS if b != "auto") and "auto" in BACKENDS
    with pytest.raises(ConfigError, match=str(list(BACKENDS)).replace("[", r"\[").replace("]", r"\]")):
        load_config(None, ["model.backend=cuda"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_config_accepts_every_registered_backend(backend):
    assert load_config(None, [f"model.backend={backend}"]).model.backend == backend


@pytest.mark.parametrize("name", ATTENTIONS)
def test_every_registered_variant_builds_and_runs(name):
    assert load_config(None, [f"model.attention={name}"]).model.attention == name
    torch.manual_seed(0)
    generator = InpaintGenerator(base_channels=4, attention=name).eval()
    variant = ATTENTION_VARIANTS[name]
    layer = generator.refine.attention
    assert (layer is None) == (variant.layer is None)
    assert layer is None or type(layer) is variant.layer
    image, mask = torch.zeros(1, 3, 16, 16), torch.zeros(1, 1, 16, 16)
    mask[..., 4:10, 4:10] = 1
    with torch.no_grad():
        _coarse, refined = generator(image, mask)
    assert refined.shape == image.shape and bool(torch.isfinite(refined).all())
    assert (generator.last_temperature is not None) == variant.learns_temperature


def test_benchmark_providers_come_from_the_registries():
    from benchmarks import builders, profiles, providers, report

    assert builders.MODEL_PROVIDERS == ATTENTIONS == report.MODEL_ORDER
    assert providers.OP_PROVIDERS[:len(KERNEL_BACKENDS)] == KERNEL_BACKENDS
    with_layer = {n for n, v in ATTENTION_VARIANTS.items() if v.layer is not None}
    assert {p.partition("-")[0] for p in builders.LAYER_PROVIDERS} == with_layer
    assert all(p.partition("-")[2] in KERNEL_BACKENDS for p in builders.LAYER_PROVIDERS if "-" in p)
    assert set(profiles.LAYER_TIMED) < set(builders.LAYER_PROVIDERS)


# ------------------------------------------------------------------------------------- the design document

DESIGN_DOC = REPO / "docs" / "design.md"
_SKIP_DIRS = {".git", ".venv", "results", "node_modules", "__pycache__"}


def _text_files() -> list[Path]:
    """The repository's own text files (source, docs, configs, scripts)."""
    return sorted(p for p in REPO.rglob("*") if p.suffix in {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".cfg"}
                  and p.is_file() and not _SKIP_DIRS & set(p.relative_to(REPO).parts)
                  and not any(part.endswith(".egg-info") for part in p.relative_to(REPO).parts))


def design_sections(text: str) -> set[str]:
    """Section numbers of the design document's headings: "## 1. The op" -> "1", "### 1.2 API" -> "1.2"."""
    return set(re.findall(r"^#{2,4} (\d+(?:\.\d+)*)\.?\s", text, flags=re.MULTILINE))


def design_references(text: str) -> tuple[list[str], list[str]]:
    """(sections cited as "design.md §N", citations of a design document outside the repository)."""
    cited = re.findall(r"design\.md\s*§\s*(\d+(?:\.\d+)*)", text)
    foreign = re.findall(r"shared/DESIGN\.md|DESIGN(?:\.md)?\s*§", text)
    return cited, foreign


def test_design_section_parser_reads_headings_and_citations():
    assert design_sections("# t\n## 1. Op\ntext\n### 1.2 API\n#### 3.3 Losses\n") == {"1", "1.2", "3.3"}
    assert design_references("see docs/design.md §1.1 and DESIGN §2 and ../shared/DESIGN.md") == (
        ["1.1"], ["DESIGN §", "shared/DESIGN.md"])


def test_every_design_reference_names_a_section_of_docs_design_md():
    sections = design_sections(DESIGN_DOC.read_text(encoding="utf-8"))
    assert {"1", "2", "3", "4", "5"} <= sections
    dangling, foreign, count = [], [], 0
    for path in (p for p in _text_files() if p != Path(__file__).resolve()):  # this file quotes the patterns
        cited, outside = design_references(path.read_text(encoding="utf-8", errors="replace"))
        count += len(cited)
        name = path.relative_to(REPO).as_posix()
        dangling += [f"{name}: §{n}" for n in cited if n not in sections]
        foreign += [f"{name}: {ref}" for ref in outside]
    assert not foreign, f"references to a design document outside the repository: {foreign}"
    assert not dangling, f"sections not in docs/design.md: {dangling}"
    assert count > 0
