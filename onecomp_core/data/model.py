"""Which model to quantize, and how to load it.

``ModelConfig`` names a local folder (``path``) or a Hugging Face Hub id
(``model_id``) and loads the model for quantization: evaluation mode, caches
off, in the requested dtype. Decoders load through ``AutoModelForCausalLM``,
encoders such as BERT through ``AutoModel``. Mistakes fail early and in one
line: a missing folder names the folder; an unreachable hub says so and points
to ``path=`` instead of waiting through minutes of retries.
"""

from __future__ import annotations

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

    def load_model(self) -> torch.nn.Module:
        """The model on the CPU in ``dtype``, in eval mode with ``use_cache`` off."""
        import transformers as tf

        kwargs = self._load_kwargs()
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
