"""The stand-alone NeuroCLIP text-encoder artifact: ``config.json`` + ``tokenizer.json`` + ``weights.pt``.

Stage 1 (``unisyn_train <DATASET> neuroclip``) writes it to
``results/<Dataset>/NeuroCLIPTrainer__<plans>__neuroclip/text_encoder/``; the synthesis trainers copy
it into their model folder and load it frozen. Each file is written through a temp file and
``os.replace``; ``config.json`` is written last, so a folder with a config is complete. Weights are a
plain ``state_dict`` read back with ``torch.load(weights_only=True)`` (no pickled code is executed).

The loaded encoder returns L2-normalised embeddings, the geometry NeuroCLIP was trained in
(``NeuroCLIP.encode_text``); ``config["normalize"]`` records this.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from unisyn_v2.contracts.model_layout import TEXT_ENCODER_FOLDER, ModelFolderName
from unisyn_v2.io_utils import read_json, replace_atomic, write_json_atomic
from unisyn_v2.metadata.tokenizer import MetadataTokenizer
from unisyn_v2.networks.factory import build_text_encoder
from unisyn_v2.networks.text_encoder import MetadataTextEncoder

ARTIFACT_FORMAT = "unisyn_v2.TextEncoderArtifact"
ARTIFACT_VERSION = 1
ARTIFACT_FILES = ("config.json", "tokenizer.json", "weights.pt")
NEUROCLIP_TRAINER_NAME = "NeuroCLIPTrainer"
NEUROCLIP_CONFIGURATION = "neuroclip"


class FrozenTextEncoder(nn.Module):
    """A trained :class:`MetadataTextEncoder` with frozen weights that stays in eval mode.

    Called like the encoder, ``(token_ids (B, L)[, eot_positions]) -> (B, embed_dim)``, and returns
    L2-normalised embeddings when ``normalize`` (the NeuroCLIP space).
    """

    def __init__(self, encoder: MetadataTextEncoder, normalize: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.normalize = normalize
        for parameter in self.encoder.parameters():
            parameter.requires_grad_(False)
        super().train(False)

    @property
    def embed_dim(self) -> int:
        """Size of the prompt embedding (the value code included when numbers are encoded by value)."""
        return self.encoder.output_dim

    @property
    def text_projection(self) -> nn.Linear:
        """The encoder's output projection (its ``out_features`` is the embedding size)."""
        return self.encoder.text_projection

    @property
    def context_length(self) -> int:
        """Longest token sequence."""
        return self.encoder.context_length

    def train(self, mode: bool = True) -> "FrozenTextEncoder":
        """Always stays in eval mode (the encoder is frozen after stage 1)."""
        return super().train(False)

    def forward(self, token_ids: torch.Tensor, eot_positions: torch.Tensor | None = None) -> torch.Tensor:
        out = self.encoder(token_ids, eot_positions)
        return F.normalize(out, dim=-1) if self.normalize else out


def text_encoder_kwargs(encoder: MetadataTextEncoder) -> dict[str, Any]:
    """The constructor kwargs that rebuild ``encoder`` (read from its modules)."""
    return {
        "vocab_size": encoder.token_embedding.num_embeddings,
        "context_length": encoder.context_length,
        "width": encoder.token_embedding.embedding_dim,
        "layers": len(encoder.transformer.blocks),
        "heads": encoder.transformer.heads,
        "embed_dim": encoder.text_projection.out_features,
        "causal": bool(encoder.causal),
        "pad_token_id": encoder.pad_token_id,
        "eot_token_id": encoder.eot_token_id,
        **({"value_encoding": encoder.value_encoding} if encoder.value_encoding is not None else {}),
    }


def neuroclip_model_folder(results_folder: Path, dataset_name: str, plans_name: str) -> Path:
    """``<results>/<Dataset>/NeuroCLIPTrainer__<plans>__neuroclip``."""
    return Path(results_folder) / dataset_name / str(ModelFolderName(NEUROCLIP_TRAINER_NAME, plans_name, NEUROCLIP_CONFIGURATION))


def text_encoder_artifact_folder(results_folder: Path, dataset_name: str, plans_name: str) -> Path:
    """Where stage 1 writes the artifact: ``<neuroclip model folder>/text_encoder``."""
    return neuroclip_model_folder(results_folder, dataset_name, plans_name) / TEXT_ENCODER_FOLDER


def _replace_atomic(path: Path, write: Any) -> None:
    replace_atomic(path, write)


def save_text_encoder_artifact(folder: Path, tokenizer: MetadataTokenizer, text_encoder: nn.Module,
                               config: Mapping[str, Any] | None = None) -> Path:
    """Write ``folder/{weights.pt, tokenizer.json, config.json}`` (config last), each atomically.

    ``text_encoder`` is a :class:`MetadataTextEncoder` (or a :class:`FrozenTextEncoder` around one);
    ``config`` adds JSON-serialisable provenance (dataset, plans, epoch, validation numbers ...).
    Returns the folder.
    """
    encoder = text_encoder.encoder if isinstance(text_encoder, FrozenTextEncoder) else text_encoder
    if not isinstance(encoder, MetadataTextEncoder):
        raise TypeError(f"text_encoder must be a MetadataTextEncoder, got {type(text_encoder).__name__}")
    kwargs = text_encoder_kwargs(encoder)
    if kwargs["vocab_size"] != tokenizer.vocab_size or kwargs["eot_token_id"] != tokenizer.eot_id \
            or kwargs["pad_token_id"] != tokenizer.pad_id or kwargs["context_length"] < tokenizer.context_length:
        raise ValueError(f"text encoder ({kwargs}) does not match the tokenizer ({tokenizer!r}, "
                         f"eot {tokenizer.eot_id}, pad {tokenizer.pad_id})")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    _replace_atomic(folder / "weights.pt", lambda p: torch.save(state, p))
    tokenizer.save(folder / "tokenizer.json")
    full = {**dict(config or {}), "format": ARTIFACT_FORMAT, "version": ARTIFACT_VERSION,
            "text_encoder_kwargs": kwargs, "embed_dim": encoder.output_dim, "normalize": True}
    write_json_atomic(folder / "config.json", full)
    return folder


def _missing_message(folder: Path) -> str:
    dataset = next((part for part in Path(folder).parts if part.startswith("Dataset")), "<DATASET>")
    return (f"no NeuroCLIP text encoder at {folder} (needs {', '.join(ARTIFACT_FILES)}); the synthesis trainers "
            f"load the stage-1 text encoder, so train it first with: unisyn_train {dataset} neuroclip")


def load_text_encoder_artifact(folder: Path, device: str | torch.device = "cpu"
                               ) -> tuple[MetadataTokenizer, FrozenTextEncoder]:
    """Read an artifact -> (tokenizer, frozen encoder in eval mode on ``device``).

    A missing folder or file raises FileNotFoundError saying which command writes it.
    """
    folder = Path(folder)
    if not all((folder / name).is_file() for name in ARTIFACT_FILES):
        raise FileNotFoundError(_missing_message(folder))
    config = read_json(folder / "config.json")
    if not isinstance(config, dict) or config.get("format") != ARTIFACT_FORMAT:
        raise ValueError(f"{folder / 'config.json'}: not a {ARTIFACT_FORMAT} config")
    if not isinstance(config.get("version"), int) or config["version"] > ARTIFACT_VERSION:
        raise ValueError(f"{folder / 'config.json'}: artifact version {config.get('version')!r} is newer than this "
                         f"unisyn_v2 reads ({ARTIFACT_VERSION})")
    tokenizer = MetadataTokenizer.load(folder / "tokenizer.json")
    kwargs = config["text_encoder_kwargs"]
    if kwargs.get("vocab_size") != tokenizer.vocab_size:
        raise ValueError(f"{folder}: tokenizer vocabulary ({tokenizer.vocab_size}) != encoder vocab_size "
                         f"({kwargs.get('vocab_size')})")
    encoder = build_text_encoder(kwargs)
    state = load_weights_only(folder / "weights.pt")
    encoder.load_state_dict(state)
    frozen = FrozenTextEncoder(encoder, normalize=bool(config.get("normalize", True)))
    return tokenizer, frozen.to(device)


def load_weights_only(path: Path) -> Any:
    """``torch.load(weights_only=True)``; a file that needs more than tensors and primitives is refused.

    Such a file may carry code (a pickle ``__reduce__`` runs on load), so it is never unpickled fully.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f"refusing to load {path}: it holds pickled objects other than tensors and plain data, "
                         f"which could run code (an untrusted or foreign file?); only weights-only files are "
                         f"read ({str(error).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"cannot read {path}: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None


def read_text_encoder_config(folder: Path) -> dict[str, Any]:
    """The artifact's ``config.json`` (FileNotFoundError with the command to run when absent)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(_missing_message(Path(folder)))
    return read_json(path)


def copy_text_encoder_artifact(source: Path, destination: Path) -> Path:
    """Copy a complete artifact into a model folder (config last, so a partial copy is never complete)."""
    source, destination = Path(source), Path(destination)
    if not all((source / name).is_file() for name in ARTIFACT_FILES):
        raise FileNotFoundError(_missing_message(source))
    destination.mkdir(parents=True, exist_ok=True)
    for name in ("weights.pt", "tokenizer.json", "config.json"):
        _replace_atomic(destination / name, lambda p, n=name: shutil.copyfile(source / n, p))
    return destination
