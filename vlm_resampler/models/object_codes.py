"""Object codes: the vectors an object-code reading LLM was pretrained to find in its image slot.

A view's code is one vector of the LLM's width, a sum of learned embeddings: the view's direction,
and for each role (horizon, above, below) the object's size + colour + shape, or that role's
"nothing". Every role has its own tables, so one vector says which colour goes with which shape
(about 40 learned vectors in all, fewer than the LLM's width: the sum stays decodable).

A view occupies T tokens in the LLM sequence, whatever resampler made them; in the code layout
each of the T tokens is the view's code, so one LLM reads any number of tokens per view. A
learned separator follows every view but the last, as the stitch's separator does.

The codes are saved with the LLM they belong to (`object_codes.safetensors` in its directory).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vlm_resampler.data.object_facts import ATTRIBUTES, NOTHING, ROLES
from vlm_resampler.data.synthpano.objects import HORIZON_DIRECTIONS

CODES_FILE = "object_codes.safetensors"
CODES_INFO = "object_codes.json"


def has_object_codes(llm_dir: str | Path) -> bool:
    """Whether a language model directory carries object codes (a hub id never does)."""
    return (Path(llm_dir) / CODES_FILE).is_file()


class ObjectCodes(nn.Module):
    def __init__(self, width: int, init_std: float = 0.5) -> None:
        super().__init__()
        self.width = width

        def table(rows: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(rows, width) * init_std)

        self.direction = table(len(HORIZON_DIRECTIONS))
        self.roles = nn.ParameterDict(
            {f"{role}_{attribute}": table(len(values)) for role in ROLES for attribute, values in ATTRIBUTES.items()}
        )
        self.nothing = table(len(ROLES))
        self.separator = nn.Parameter(torch.randn(width) * init_std)

    def view_codes(self, facts: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        """facts [B, V, roles, 3] (object_facts.view_facts), directions [V] -> codes [B, V, width]."""
        codes = self.direction[directions].expand(facts.shape[0], -1, -1)
        for r, role in enumerate(ROLES):
            present = facts[:, :, r, 0] != NOTHING
            obj = sum(
                self.roles[f"{role}_{attribute}"][facts[:, :, r, a].clamp(min=0)]
                for a, attribute in enumerate(ATTRIBUTES)
            )
            codes = codes + torch.where(present[..., None], obj, self.nothing[r].expand_as(obj))
        return codes

    def sequence(self, view_codes: torch.Tensor, tokens_per_view: int, separators: bool = True) -> torch.Tensor:
        """[B, V, width] -> [B, V * T + V - 1, width]: each view's code T times, a separator
        between two views (none with separators=False: [B, V * T, width])."""
        b, v, w = view_codes.shape
        pieces = []
        for i in range(v):
            pieces.append(view_codes[:, i : i + 1].expand(b, tokens_per_view, w))
            if separators and i < v - 1:
                pieces.append(self.separator.expand(b, 1, w))
        return torch.cat(pieces, dim=1)

    # ---- files ----------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        directory = Path(directory)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / CODES_FILE), metadata={"format": "pt"})
        info = {
            "width": self.width,
            "roles": list(ROLES),
            "attributes": {k: list(v) for k, v in ATTRIBUTES.items()},
            "directions": list(HORIZON_DIRECTIONS),
        }
        (directory / CODES_INFO).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> ObjectCodes:
        """The codes saved beside an LLM; strict (every table, the vocabulary they were made for)."""
        directory = Path(directory)
        path = directory / CODES_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: this language model was not pretrained to read object codes "
                "(use backbone=tiny_reader, or set the stage's object_code_weight to 0)"
            )
        info = json.loads((directory / CODES_INFO).read_text(encoding="utf-8"))
        expected = {
            "roles": list(ROLES),
            "attributes": {k: list(v) for k, v in ATTRIBUTES.items()},
            "directions": list(HORIZON_DIRECTIONS),
        }
        for key, value in expected.items():
            if info.get(key) != value:
                raise ValueError(f"{directory / CODES_INFO}: {key} is {info.get(key)!r}, this version reads {value!r}")
        codes = cls(int(info["width"]))
        state = load_file(str(path))
        wrong_dtype = [k for k, v in state.items() if v.dtype != torch.float32]
        if wrong_dtype:
            raise ValueError(f"{path}: {wrong_dtype[0]} is not float32")
        codes.load_state_dict(state, strict=True)  # names any missing, unexpected or reshaped table
        return codes
