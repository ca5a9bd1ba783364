"""Which model to quantize, and how to load it.

``ModelConfig`` names a local folder (``path``) or a Hugging Face Hub id
(``model_id``) and loads the model for quantization: evaluation mode, caches
off, in the requested dtype. Decoders load through ``AutoModelForCausalLM``,
encoders such as BERT through ``AutoModel``. Mistakes fail early and in one
line: a missing folder names the folder; an unreachable hub says so and points
to ``path=`` instead of waiting through minutes of retries.
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

_DTYPES = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
#: config keys that hold the number of positions a model was trained for, by architecture
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


@dataclass(frozen=True)
class ModelFacts:
    """What is known of a model before it is loaded (for checks before long work)."""

    #: positions the model was trained for (None when its config does not say)
    context: int | None
    #: number of stored weights, from the safetensors headers of a local folder (else None)
    parameters: int | None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers a TCP connect (False in offline mode).

    Probing first turns an offline machine's minutes of download retries into
    one immediate, clear error.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """A torch dtype from a name such as "float16" / "bf16"; "auto" keeps the checkpoint's."""
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.lower().removeprefix("torch.")]
    raise ValueError(
        f"dtype={dtype!r} is not supported; use one of float16, bfloat16, float32, auto "
        "or a torch.dtype"
    )


def resolve_device(device: str | None) -> torch.device:
    """A torch device; "auto" (or None) means the first GPU when there is one, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _looks_like_path(name: str) -> bool:
    """Hub ids are "name" or "owner/name"; anything else is meant as a folder."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1


@dataclass
class ModelConfig:
    """A model to load: exactly one of ``model_id`` (hub id or folder) and ``path`` (folder)."""

    model_id: str | None = None
    path: str | os.PathLike[str] | None = None
    dtype: str | torch.dtype = "float16"
    device: str = "auto"
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        problems = []
        if (self.model_id is None) == (self.path is None):
            problems.append("give exactly one of model_id (hub id) and path (local folder)")
        try:
            resolve_dtype(self.dtype)
        except ValueError as err:
            problems.append(str(err))
        if not _valid_device(self.device):
            problems.append(
                f"device={self.device!r} is not supported; use 'auto', 'cpu' or 'cuda:N'"
            )
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    @property
    def source(self) -> str:
        """The folder or hub id the model is loaded from."""
        return str(self.path) if self.path is not None else str(self.model_id)

    def resolve_device(self) -> torch.device:
        """The compute device: "auto" means the first GPU when there is one, else the CPU."""
        return resolve_device(self.device)

    def facts(self) -> ModelFacts:
        """The model's context length and size, read from its config and file headers only.

        A local folder's weight files are checked on the way: a truncated
        safetensors file or a folder holding only pickle weights fails here, in
        one line naming the file, before any long work.
        """
        import transformers as tf

        kwargs = self._load_kwargs()
        config = self._call(tf.AutoConfig.from_pretrained, **kwargs)
        local = Path(kwargs["pretrained_model_name_or_path"])
        parameters = check_weight_files(local) if local.is_dir() else None
        return ModelFacts(context_length(config), parameters)

    def checkpoint_dtype(self) -> torch.dtype | None:
        """The dtype the model's config.json records (None when it records none)."""
        import transformers as tf

        config = self._call(tf.AutoConfig.from_pretrained, **self._load_kwargs())
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype.removeprefix("torch."), None)
        return dtype if isinstance(dtype, torch.dtype) else None

    def load_model(self) -> torch.nn.Module:
        """The model on the CPU in ``dtype``, in eval mode with ``use_cache`` off."""
        import transformers as tf

        kwargs = self._load_kwargs()
        local = Path(kwargs["pretrained_model_name_or_path"])
        if local.is_dir():
            check_weight_files(local)
        config = self._call(tf.AutoConfig.from_pretrained, **kwargs)
        loader = tf.AutoModelForCausalLM if is_causal(config) else tf.AutoModel
        model = self._call(loader.from_pretrained, dtype=resolve_dtype(self.dtype), **kwargs)
        model.config.use_cache = False
        return model.eval()

    def load_tokenizer(self) -> Any:
        """The tokenizer, with a pad token (eos, else unk, else bos) when it has none."""
        import transformers as tf

        tokenizer = self._call(tf.AutoTokenizer.from_pretrained, **self._load_kwargs())
        if tokenizer.pad_token is None:
            for fallback in (tokenizer.eos_token, tokenizer.unk_token, tokenizer.bos_token):
                if fallback is not None:
                    tokenizer.pad_token = fallback
                    break
        return tokenizer

    def _load_kwargs(self) -> dict[str, Any]:
        """Where to load from; checks a local folder exists and the hub is reachable."""
        kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        local = Path(self.source).expanduser()
        if self.path is not None or local.exists() or _looks_like_path(self.source):
            if not local.is_dir():
                raise FileNotFoundError(f"model folder not found: {self.source}")
            return {"pretrained_model_name_or_path": str(local), **kwargs}
        if not hub_reachable():
            # cached hub files still load offline; only a cache miss is an error
            kwargs["local_files_only"] = True
        return {"pretrained_model_name_or_path": self.source, **kwargs}

    def _call(self, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except OSError as err:
            if self.path is not None or Path(self.source).expanduser().exists():
                raise
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if kwargs.get("local_files_only"):
                reason = (
                    "the Hugging Face Hub could not be reached and it is not in the local cache"
                )
            raise ValueError(
                f"could not load model {self.source!r}: {reason}; "
                "pass a local folder instead (ModelConfig(path=...))"
            ) from None


def context_length(config: Any) -> int | None:
    """Positions the model was trained for, from a transformers config (None when unknown)."""
    for key in _CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_context(length: int, context: int | None, option: str, allow_longer: bool) -> None:
    """Refuse windows longer than the model's context, unless the user allows it explicitly."""
    if context is None or length <= context or allow_longer:
        return
    raise ValueError(
        f"{option} {length}: the model was trained for {context} positions; use "
        f"{option} {context} or less (or --allow-longer-context to run anyway)"
    )


def check_weight_files(folder: Path) -> int:
    """Read the header of every safetensors file in ``folder``; the number of stored weights.

    Refuses a folder whose weights are only pickle files (onecomp never
    unpickles) and any truncated or foreign safetensors file, naming it.
    """
    from safetensors import safe_open

    from ..storage.reading import check_tensor_file, pickle_message, pickle_only

    pickled = pickle_only(folder)
    if pickled is not None:
        raise ValueError(pickle_message(pickled))
    count = 0
    for path in sorted(folder.glob("*.safetensors")):
        check_tensor_file(path)
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                count += math.prod(f.get_slice(key).get_shape())
    return count


def _valid_device(device: str) -> bool:
    if device == "auto":
        return True
    try:
        return torch.device(device).type in ("cpu", "cuda", "mps", "xpu")
    except (RuntimeError, TypeError):
        return False


def is_causal(config: Any) -> bool:
    """Decoder (causal LM) or encoder, judged from the checkpoint's architectures."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    architectures = getattr(config, "architectures", None) or []
    if architectures:
        return any(name.endswith(_CAUSAL_SUFFIXES) for name in architectures)
    return config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and config.model_type != "bert"
