"""torch is optional (the `torch` extra): opt_jax and analyses import without it and convert safetensors; a `.bin`
checkpoint without it is a clear error naming the extra."""

import hf_models
from helpers import run_script

# Runs with torch made unimportable (a None entry in sys.modules makes `import torch` raise ImportError).
WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None
import opt_jax, analyses
from opt_jax.errors import CheckpointError
assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None], "importing opt_jax loaded torch"
out = opt_jax.convert(sys.argv[1], sys.argv[3], verbose=False)
opt_jax.load(out)
try:
    opt_jax.convert(sys.argv[2], sys.argv[4], verbose=False)
except CheckpointError as e:
    print("refused:", e)
else:
    raise SystemExit("a .bin checkpoint converted without torch")
"""


def test_safetensors_convert_without_torch_and_bin_names_the_extra(pre_ln_model, tmp_path):
    safetensors = hf_models.save(pre_ln_model, str(tmp_path / "st"), "safetensors")
    bin_dir = hf_models.save(pre_ln_model, str(tmp_path / "bin"), "bin")
    result = run_script("-c", WITHOUT_TORCH, safetensors, bin_dir, str(tmp_path / "a"), str(tmp_path / "b"))
    assert result.returncode == 0, result.stderr
    refusal = result.stdout.strip()
    assert refusal.startswith("refused: ") and "pytorch_model.bin" in refusal and "opt_jax[torch]" in refusal, refusal
