"""Loading student/teacher folders and checking they can be distilled together.

Distillation compares log-probs token by token, so student and teachers
must share one vocabulary; a mismatch is caught here with a clear message
rather than surfacing as silently wrong KL values.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from mopdx.errors import ModelError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_model_folder(path: str | Path, what: str) -> Path:
    """The folder as a Path, or a clear error when it is not a HF model folder."""
    p = Path(path)
    if not (p / "config.json").is_file():
        raise ModelError(f"{what} folder {p} not found or not a Hugging Face model folder (no config.json)")
    return p


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The folder's tokenizer, as its ``tokenizer.json`` tokenises.

    Why not ``AutoTokenizer`` alone: in a model folder transformers picks the tokenizer class of
    the model type (``Qwen2Tokenizer`` for a Qwen2 config), which rebuilds its own
    pre-tokenizer from the vocabulary and merges.  A folder whose ``tokenizer.json`` splits text
    otherwise (a custom BPE, the lab's second tokenizer) would then be tokenised in a way its
    model was never trained on -- silently: the lab's second-tokenizer teachers scored 0.0 and
    sat 4-7 nats from the student that way.  So when the class's pre-tokenizer differs from the
    file's, the file is loaded as written."""
    p = check_model_folder(path, "model")
    try:
        tok = AutoTokenizer.from_pretrained(p)
        if _rebuilt_pre_tokenizer(tok, p):
            tok = PreTrainedTokenizerFast.from_pretrained(p)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types here
        raise ModelError(f"cannot load a tokenizer from {p}: {str(exc).splitlines()[0]}") from None
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _rebuilt_pre_tokenizer(tok: PreTrainedTokenizerBase, folder: Path) -> bool:
    """Whether the loaded tokenizer splits text with another pre-tokenizer than the folder's ``tokenizer.json``."""
    import json

    file = folder / "tokenizer.json"
    backend = getattr(tok, "backend_tokenizer", None)
    if not file.is_file() or backend is None:
        return False
    try:
        written = json.loads(file.read_text(encoding="utf-8")).get("pre_tokenizer")
    except (OSError, ValueError):
        return False
    return written != json.loads(backend.to_str()).get("pre_tokenizer")


def load_model(path: str | Path, dtype: str = "float32", what: str = "model") -> PreTrainedModel:
    p = check_model_folder(path, what)
    if dtype not in DTYPES:
        raise ModelError(f"model.dtype={dtype!r} is not one of {', '.join(DTYPES)}")
    try:
        return AutoModelForCausalLM.from_pretrained(p, dtype=DTYPES[dtype])
    except Exception as exc:  # noqa: BLE001
        mismatch = _shape_mismatch(p)  # transformers' own answer points at a report our logging hides
        raise ModelError(f"cannot load {what} from {p}: {mismatch or str(exc).splitlines()[0]}") from None


def _shape_mismatch(p: Path) -> str | None:
    """Which weights do not fit ``config.json`` (an edited ``vocab_size``, say), said in one
    line; None when the shapes agree or cannot be read. The model is built on the meta
    device, so this allocates no weights."""
    try:
        from safetensors import safe_open
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(p)
        with torch.device("meta"):
            expected = {k: list(v.shape) for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()}
        bad = []
        for f in sorted(p.glob("*.safetensors")):
            with safe_open(str(f), "pt") as fh:
                for k in fh.keys():
                    shape = list(fh.get_slice(k).get_shape())
                    if k in expected and expected[k] != shape:
                        bad.append((k, shape, expected[k]))
    except Exception:  # noqa: BLE001 - a diagnosis only; the caller has its own message
        return None
    if not bad:
        return None
    k, shape, want = bad[0]
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    line = f"config.json does not fit the weights: {k} is {shape} in the weights but config.json makes it {want}{more}"
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and want[0] == vocab and shape[0] != vocab:
        line += f"; config.json says vocab_size={vocab} but the weights have {shape[0]} rows: set vocab_size back to {shape[0]}"
    return line


def same_vocab(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    """The two tokenizers map every token to the same id."""
    return a is b or a.get_vocab() == b.get_vocab()


def check_same_vocab(student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase, teacher_name: str) -> None:
    """Raise when the teacher's tokenizer does not map tokens to the same ids."""
    if not same_vocab(student, teacher):
        raise ModelError(
            f"teacher {teacher_name!r} uses a different vocabulary than the student "
            f"({len(teacher)} vs {len(student)} tokens): use a teacher with the student's tokenizer, or set model.cross_tokenizer=true "
            "(its text is re-tokenised for the teacher; loss.kind=pg)"
        )


def check_model_vocab(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    """The embedding matrix must cover every token id the tokenizer can emit."""
    rows = model.get_input_embeddings().weight.shape[0]
    if rows < len(tokenizer):
        raise ModelError(f"{name}: model has {rows} embedding rows but the tokenizer has {len(tokenizer)} tokens")
