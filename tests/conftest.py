"""Shared fixtures: tiny random HF OPT checkpoints written the way transformers writes them, and the planted
model's pipeline run once per session (`planted_run`).

Test files live in folders mirroring the packages (`tests/opt_jax/`, `tests/collection/`, ...). The shared
modules (`helpers`, `hf_models`, `planted`, `kill`,
`paused_commits`) are imported from this folder, and the repository root
comes first on the path, so that `import opt_jax` finds the package and never the folder of its tests.
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
_TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _TESTS)
sys.path.insert(0, os.path.dirname(_TESTS))

import dataclasses  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402

import pytest  # noqa: E402

import hf_models  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Tests marked `heaviest(GB)` first, the most memory first: what they need is free before other tests have
    grown this process (compiled programs, models, arrays the collector keeps), whatever files a selection such
    as `-m real` takes."""
    def gb(item):
        marker = item.get_closest_marker("heaviest")
        return marker.args[0] if marker else 0

    items.sort(key=lambda item: -gb(item))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def pre_ln_model():
    """A random pre-LN OPTForCausalLM (4 heads)."""
    return hf_models.random_model(hf_models.hf_config(**hf_models.PRE_LN), seed=1)


@pytest.fixture(scope="session")
def pre_ln_dir(pre_ln_model, tmp_path_factory):
    """pre_ln_model saved as one safetensors file, with a small real tokenizer beside it."""
    directory = str(tmp_path_factory.mktemp("pre_ln_hf"))
    hf_models.save(pre_ln_model, directory, "safetensors")
    hf_models.save_tokenizer(directory, pre_ln_model.config.vocab_size)
    return directory


DOCS = ["the dead neurons of large language models", "n-gram neurons fire on a few tokens " * 3,
        "positional", "language models are dead or positional, and the neurons " * 5, "models"]


@pytest.fixture(scope="session")
def tiny_model(pre_ln_dir, tmp_path_factory):
    """pre_ln_model converted, with its tokenizer: the model statistics tests collect from."""
    import opt_jax

    return opt_jax.convert(pre_ln_dir, str(tmp_path_factory.mktemp("tiny_model") / "m"), verbose=False)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """DOCS as one .jsonl file."""
    import json

    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": d}) for d in DOCS) + "\n")
    return str(path)


# The planted model's pipeline (tests/planted.py), run once per session and shared by the tests of the report,
# the atlas and `fired`: HF checkpoint -> convert -> collect (n-grams, 16 examples per neuron) -> analyze, each
# step by its script.

def run_step(script, *args):
    """Run scripts/<script> as a user does; fail the test with its stderr when it fails."""
    from helpers import run_script

    result = run_script(os.path.join("scripts", script), *args, timeout=None)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@dataclasses.dataclass
class PlantedRun:
    """Where the planted pipeline wrote its outputs, and what the report found."""

    root: pathlib.Path  # hf/, model/, stats/, report/, corpus.jsonl
    report: dict  # report.json's entry of the model "planted"
    stdout: str  # scripts/analyze.py's output

    @property
    def model(self) -> str:
        return str(self.root / "model")

    @property
    def stats(self) -> str:
        return str(self.root / "stats")


@pytest.fixture(scope="session")
def planted_run(tmp_path_factory) -> PlantedRun:
    """The planted model converted, collected and analyzed (`PlantedRun`)."""
    import planted

    root = tmp_path_factory.mktemp("planted")
    planted.build(str(root / "hf"))
    corpus = planted.write_corpus(str(root / "corpus.jsonl"))
    run_step("convert.py", "--hf_path", str(root / "hf"), "--out", str(root / "model"))
    run_step("collect.py", "--model", str(root / "model"), "--corpus", corpus, "--out", str(root / "stats"),
             "--seq_len", str(planted.SEQ), "--batch_size", "16", "--ngram_orders", "2,3")
    out = run_step("analyze.py", "--stats", str(root / "stats"), "--out", str(root / "report"),
                   "--names", "planted")
    with open(root / "report" / "report.json") as f:
        return PlantedRun(root, json.load(f)["models"]["planted"], out.stdout)
