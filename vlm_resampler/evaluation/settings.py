"""Eval settings read from conf/eval.yaml and checked before anything is loaded (torch-free)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from vlm_resampler.errors import ConfigError
from vlm_resampler.ranges import BOOL, NUM_THREADS, PRECISION

DEVICE_SETTING = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1):
            raise ConfigError(f"max_new_tokens={self.max_new_tokens!r}: expected an int >= 1")
        if not (isinstance(self.min_new_tokens, int) and 0 <= self.min_new_tokens <= self.max_new_tokens):
            raise ConfigError(
                f"min_new_tokens={self.min_new_tokens!r}: expected an int in [0, max_new_tokens={self.max_new_tokens}]"
            )
        if not isinstance(self.do_sample, bool):
            raise ConfigError(f"generation.do_sample={self.do_sample!r}: expected true or false")
        if self.do_sample:
            # Sampled captions that cannot be drawn again are not a result anyone can check.
            if not isinstance(self.seed, int) or isinstance(self.seed, bool):
                raise ConfigError(
                    "generation.do_sample=true needs an explicit generation.seed=<int>, "
                    "so that the sampled captions can be reproduced"
                )
            if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
                raise ConfigError(f"generation.temperature={self.temperature!r}: expected a number > 0")
            if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
                raise ConfigError(f"generation.top_p={self.top_p!r}: expected a number in (0, 1]")
            if not (isinstance(self.top_k, int) and self.top_k >= 0):
                raise ConfigError(f"generation.top_k={self.top_k!r}: expected an int >= 0 (0: no top-k cut)")
        else:
            # A sampling knob on greedy decoding would be silently without effect.
            for name, neutral in (("temperature", 1.0), ("top_p", 1.0), ("top_k", 0)):
                if getattr(self, name) != neutral:
                    raise ConfigError(
                        f"generation.{name}={getattr(self, name)!r} only applies with "
                        "generation.do_sample=true (decoding is greedy by default)"
                    )

    @property
    def decoding(self) -> str:
        if not self.do_sample:
            return "greedy"
        return f"sampled: seed {self.seed}, temperature {self.temperature}, top_p {self.top_p}, top_k {self.top_k}"

    @classmethod
    def from_eval_config(cls, cfg) -> GenerationSettings:
        gen = cfg.generation
        return cls(
            max_new_tokens=cfg.max_new_tokens,
            do_sample=gen.do_sample,
            temperature=gen.temperature,
            top_p=gen.top_p,
            top_k=gen.top_k,
            seed=gen.seed,
        )


@dataclass(frozen=True)
class ReportSettings:
    enabled: bool
    panorama_width: int
    view_size: int
    jpeg_quality: int

    def __post_init__(self) -> None:
        for name in ("panorama_width", "view_size"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 16):
                raise ConfigError(f"report.{name}={getattr(self, name)!r}: expected an int >= 16 (pixels)")
        if not (isinstance(self.jpeg_quality, int) and 1 <= self.jpeg_quality <= 95):
            raise ConfigError(f"report.jpeg_quality={self.jpeg_quality!r}: expected an int in [1, 95]")

    @classmethod
    def from_eval_config(cls, cfg) -> ReportSettings:
        return cls(**{k: cfg.report[k] for k in ("enabled", "panorama_width", "view_size", "jpeg_quality")})


EVAL_SWITCHES = ("qa", "baselines", "verify", "meteor")  # conf/eval.yaml's true/false settings


def scores_meteor(cfg) -> bool:
    # A sweep's conf/ snapshot from before the `meteor` switch has none: METEOR, as it had then.
    return bool(cfg.get("meteor", True))


def compute_settings(cfg) -> tuple[str, str]:
    """(device, precision) of an eval; a sweep's conf/ snapshot from before these keys has neither:
    the CPU in float32, as evals ran then."""
    return str(cfg.get("device", "cpu")), str(cfg.get("precision", "fp32"))


def check_eval_settings(cfg) -> None:
    """Called from the eval's preflight: a bad generation or report setting stops before loading."""
    NUM_THREADS.check("num_threads", cfg.num_threads, error=ConfigError)
    if "device" in cfg and not (isinstance(cfg.device, str) and DEVICE_SETTING.fullmatch(cfg.device)):
        raise ConfigError(
            f"device={cfg.device!r}: expected auto (the GPU when the machine has one, else the CPU), cpu, cuda "
            "or cuda:<index>"
        )
    if "precision" in cfg:
        PRECISION.check("precision", cfg.precision, error=ConfigError)
    for switch in EVAL_SWITCHES:
        if switch in cfg:  # a sweep's older conf/ snapshot may lack one
            BOOL.check(switch, cfg[switch], error=ConfigError)
    GenerationSettings.from_eval_config(cfg)
    ReportSettings.from_eval_config(cfg)
