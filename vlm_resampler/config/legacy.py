"""The user guide's YAML format, turned into a Hydra experiment preset (conf/experiment/<name>.yaml).

The guide's format (SEED_GUIDE.md, shared/notes/ORIGIN.md §3.1) keeps the model in `models:`
(`resampler_type` plus a `resampler_config` block, or the flat fields `latent_dimension`,
`resampler_hidden_dim`, ...), the run name in `experiment.name`, the stages in
`training.stages` / `training.stage_configs.<stage>`, LoRA in `lora:` and the views in
`image_processing:`. Every key is either mapped to exactly one setting here, or refused with the
reason: nothing is silently dropped. Resampler parameters the old file leaves out are written
into the preset from conf/resampler/<type>.yaml, so the preset names every value.

    python launch/import_config.py old.yaml [--name NAME] [--force]
"""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import OmegaConf

from vlm_resampler.catalog import CONF_DIR
from vlm_resampler.config.legacy_fields import (
    DEFAULT,
    FLAT_RESAMPLER_FIELDS,
    IMAGE_FIELDS,
    KIND_NAMES,
    LLM_NAME_KEYS,
    LORA_FIELDS,
    MODEL_KEYS,
    PRESET_NAME,
    QWEN3_SIZES,
    SECTIONS,
    STAGE_FIELDS,
    VISION_NAME_KEYS,
    is_kind,
    type_name,
    yaml_value,
)
from vlm_resampler.config.legacy_preset import Preset
from vlm_resampler.errors import ConfigError
from vlm_resampler.guide_names import RESAMPLER_TYPES, STAGES
from vlm_resampler.suggest import did_you_mean


def yaml_options(group: str) -> dict[str, dict]:
    return {p.stem: OmegaConf.to_container(OmegaConf.load(p)) for p in sorted((CONF_DIR / group).glob("*.yaml"))}


class _Converter:
    def __init__(self, old: dict, source: str) -> None:
        self.old, self.source = old, source
        self.problems: list[str] = []
        self.values: dict[str, object] = {}
        self.origins: dict[str, str] = {}
        self.mapped: list[tuple[str, str]] = []
        self.notes: list[str] = []
        self.groups: dict[str, str] = {}
        self.resampler: str | None = None
        self.resampler_defaults: dict = {}
        self.description: str | None = None
        self.experiment_name: str | None = None

    # -- helpers ---------------------------------------------------------------------------
    def refuse(self, message: str) -> None:
        self.problems.append(message)

    def set(self, key: str, value, old_key: str, note: str = "", kind: type | None = None) -> None:
        if kind is not None and not is_kind(value, kind):
            self.refuse(f"{old_key}={value!r}: expected {KIND_NAMES[kind]}, found {type_name(value)}")
            return
        if key in self.values and self.values[key] != value:
            self.refuse(
                f"{old_key}={value!r} and {self.origins[key]}={self.values[key]!r} both set {key}; keep one of them"
            )
            return
        self.values[key] = value
        self.origins.setdefault(key, old_key)
        self.mapped.append((old_key, f"{key}: {yaml_value(value)}" + (f"  ({note})" if note else "")))

    def section(self, name: str) -> dict:
        node = self.old.get(name)
        if node is None:
            return {}
        if not isinstance(node, dict):
            self.refuse(f"{name}: expected a mapping of keys, found {type_name(node)} {node!r}")
            return {}
        return node

    def unknown(self, key: str, name: str, understood) -> None:
        self.refuse(f"{key}: not understood.{did_you_mean(name, understood)} Understood here: {', '.join(understood)}")

    # -- sections --------------------------------------------------------------------------
    def convert(self) -> None:
        for key in self.old:
            if key not in SECTIONS:
                self.unknown(str(key), str(key), SECTIONS)
        self.models(self.section("models"))
        self.experiment(self.section("experiment"))
        self.training(self.section("training"))
        self.lora(self.section("lora"))
        self.image_processing(self.section("image_processing"))

    def experiment(self, node: dict) -> None:
        for key, value in node.items():
            if key == "name":
                if not isinstance(value, str) or not value.strip() or value.strip().lower() == "auto":
                    self.notes.append(f"experiment.name={value!r}: no automatic names here; the preset's name is used")
                else:
                    self.experiment_name = value
            elif key == "description":
                self.description = str(value)
                self.mapped.append(("experiment.description", "a comment at the top of the preset"))
            else:
                self.unknown(f"experiment.{key}", str(key), ["name", "description"])

    def models(self, node: dict) -> None:
        raw = node.get("resampler_type")
        options = yaml_options("resampler")
        if raw is None:
            self.refuse(
                f"models.resampler_type is missing: name the resampler ({', '.join(options)}); nothing is assumed"
            )
        elif str(raw) not in RESAMPLER_TYPES:
            self.refuse(
                f"models.resampler_type={raw!r}: not understood.{did_you_mean(str(raw), RESAMPLER_TYPES)} "
                f"Understood: {', '.join(RESAMPLER_TYPES)}"
            )
        else:
            self.resampler = RESAMPLER_TYPES[str(raw)]
            self.resampler_defaults = {k: v for k, v in options[self.resampler].items() if not k.startswith("_")}
            self.groups["resampler"] = self.resampler
            self.mapped.append(
                ("models.resampler_type", f"resampler={self.resampler} (the preset's `override /resampler`)")
            )
        block = node.get("resampler_config")
        if block is not None and not isinstance(block, dict):
            self.refuse(f"models.resampler_config: expected a mapping of parameters, found {type_name(block)}")
        for key, value in (block or {}).items():
            self.resampler_param(f"models.resampler_config.{key}", str(key), value)
        for key, value in node.items():
            if key in ("resampler_type", "resampler_config", *VISION_NAME_KEYS, *LLM_NAME_KEYS):
                continue
            if key in FLAT_RESAMPLER_FIELDS:
                self.resampler_param(f"models.{key}", FLAT_RESAMPLER_FIELDS[key], value)
            elif key == "overlap_ratio":
                self.set(
                    "view.overlap",
                    value,
                    "models.overlap_ratio",
                    "one overlap ratio cuts the views and drives the overlap loss",
                    float,
                )
            else:
                self.unknown(f"models.{key}", str(key), MODEL_KEYS)
        self.backbone(node)

    def resampler_param(self, old_key: str, param: str, value) -> None:
        if self.resampler is None:
            return  # the missing or unknown type is already reported
        if param not in self.resampler_defaults:
            from vlm_resampler.catalog import resampler_options_with

            message = f"{old_key}: not a parameter of resampler={self.resampler}.{did_you_mean(param, self.resampler_defaults)}"
            elsewhere = resampler_options_with(param)
            if elsewhere:
                message += f" `{param}` is a parameter of resampler={', '.join(elsewhere)}."
            message += f" Parameters of resampler={self.resampler}: {', '.join(self.resampler_defaults)}"
            self.refuse(message)
            return
        self.set(f"resampler.{param}", value, old_key)

    def backbone(self, node: dict) -> None:
        vision_keys = [k for k in VISION_NAME_KEYS if k in node]
        llm_keys = [k for k in LLM_NAME_KEYS if k in node]
        for keys in (vision_keys, llm_keys):
            if len({str(node[k]) for k in keys}) > 1:
                self.refuse(f"{' and '.join('models.' + k for k in keys)} name different models; keep one")
                return
        vision = str(node[vision_keys[0]]) if vision_keys else None
        llm = str(node[llm_keys[0]]) if llm_keys else None
        if vision is None and llm is None:
            return
        options = {
            name: (str(o["vision_encoder"]["name_or_path"]), str(o["language_model"]["name_or_path"]))
            for name, o in yaml_options("backbone").items()
        }
        vision_key = f"models.{vision_keys[0]}" if vision_keys else None
        llm_key = f"models.{llm_keys[0]}" if llm_keys else None
        if llm is not None:
            match = re.fullmatch(r"Qwen/Qwen3-([0-9.]+B)(-Base)?", llm)
            if match and match.group(1) not in QWEN3_SIZES:
                self.refuse(
                    f"{llm_key}={llm!r}: there is no Qwen3 of that size; Qwen3 comes in {', '.join(QWEN3_SIZES)}"
                )
                return
        exact = [n for n, (v, lm) in options.items() if vision in (None, v) and llm in (None, lm)]
        same_vision = [n for n, (v, _) in options.items() if v == vision]
        if exact:
            self.groups["backbone"] = exact[0]
            for key in (vision_key, llm_key):
                if key:
                    self.mapped.append((key, f"backbone={exact[0]} (the preset's `override /backbone`)"))
        elif same_vision:
            self.groups["backbone"] = same_vision[0]
            self.mapped.append((vision_key, f"backbone={same_vision[0]} (the preset's `override /backbone`)"))
            self.set("backbone.language_model.name_or_path", llm, llm_key, "its tokenizer follows")
        else:
            known = sorted({v for v, _ in options.values()}) if vision else sorted({lm for _, lm in options.values()})
            key, name = (vision_key, vision) if vision else (llm_key, llm)
            self.refuse(
                f"{key}={name!r}: no conf/backbone option has this model.{did_you_mean(name, known)} "
                f"Known: {', '.join(known)}; for another model add a conf/backbone/<name>.yaml (its image_size too)"
            )

    def training(self, node: dict) -> None:
        for key, value in node.items():
            if key == "stages":
                self.stages(value)
            elif key == "stage_configs":
                if not isinstance(value, dict):
                    self.refuse(f"training.stage_configs: expected a mapping of stages, found {type_name(value)}")
                    continue
                for stage, settings in value.items():
                    self.stage(str(stage), settings)
            else:
                self.unknown(f"training.{key}", str(key), ["stages", "stage_configs"])

    def stages(self, value) -> None:
        names = [s.strip() for s in value.split(",")] if isinstance(value, str) else value
        if not isinstance(names, list):
            self.refuse(f"training.stages={value!r}: expected a list of stage names")
            return
        ours = []
        for name in names:
            if not isinstance(name, str):
                self.refuse(f"training.stages: {name!r} is not a stage name")
                return
            if str(name) not in STAGES:
                self.refuse(
                    f"training.stages: stage {name!r} not understood.{did_you_mean(str(name), STAGES)} Understood: {', '.join(STAGES)}"
                )
                return
            ours.append(STAGES[str(name)])
        self.set("stages", ours, "training.stages")

    def stage(self, name: str, settings) -> None:
        where = f"training.stage_configs.{name}"
        if name not in STAGES:
            self.refuse(
                f"{where}: stage {name!r} not understood.{did_you_mean(name, STAGES)} Understood: {', '.join(STAGES)}"
            )
            return
        if not isinstance(settings, dict):
            self.refuse(f"{where}: expected a mapping of settings, found {type_name(settings)}")
            return
        stage = STAGES[name]
        for key, value in settings.items():
            if key not in STAGE_FIELDS:
                self.unknown(f"{where}.{key}", str(key), list(STAGE_FIELDS))
            elif STAGE_FIELDS[key][0].startswith("vicreg.") and stage != "vision":
                self.refuse(f"{where}.{key}: only the vision stage has the overlap (VICReg) loss")
            else:
                setting, kind = STAGE_FIELDS[key]
                self.set(f"stage.{stage}.{setting}", value, f"{where}.{key}", kind=kind)
                if key == "epochs":
                    self.set(
                        f"stage.{stage}.max_steps",
                        -1,
                        f"{where}.{key}",
                        "run whole epochs; a stage otherwise stops at max_steps",
                    )

    def lora(self, node: dict) -> None:
        use = node.get("use_lora", True)
        if not isinstance(use, bool):
            self.refuse(f"lora.use_lora={use!r}: expected true or false")
            return
        if not use:
            self.set("stage.finetune.lora", None, "lora.use_lora", "no LoRA: the LLM stays frozen")
        for key, value in node.items():
            if key == "use_lora":
                continue
            if key not in LORA_FIELDS:
                self.unknown(f"lora.{key}", str(key), ["use_lora", *LORA_FIELDS])
            elif not use:
                self.refuse(f"lora.{key}: has no effect with lora.use_lora: false; remove one of them")
            else:
                setting, kind = LORA_FIELDS[key]
                self.set(
                    f"stage.finetune.lora.{setting}",
                    value,
                    f"lora.{key}",
                    "LoRA is trained in the finetune stage",
                    kind,
                )

    def image_processing(self, node: dict) -> None:
        views = yaml_options("view")
        for key, value in node.items():
            if key == "crop_strategy":
                strategies = {o.get("_target_", "").rsplit(".", 1)[-1]: n for n, o in views.items()}
                if str(value) in views:
                    self.groups["view"] = str(value)
                    self.mapped.append(
                        ("image_processing.crop_strategy", f"view={value} (the preset's `override /view`)")
                    )
                else:
                    self.refuse(
                        f"image_processing.crop_strategy={value!r}: not available here.{did_you_mean(str(value), views)} "
                        f"Available view strategies: {', '.join(views)} ({', '.join(strategies)})"
                    )
            elif key in IMAGE_FIELDS:
                note = "the vision encoder's input size; views are cut at it" if key == "image_size" else ""
                setting, kind = IMAGE_FIELDS[key]
                self.set(setting, value, f"image_processing.{key}", note, kind)
            else:
                self.unknown(f"image_processing.{key}", str(key), ["crop_strategy", *IMAGE_FIELDS])

    # -- completing ------------------------------------------------------------------------
    def fill_resampler_defaults(self, source_name: str) -> None:
        """Every resampler parameter, in conf/resampler/<type>.yaml's order; missing ones from there."""
        given = {
            k: self.values.pop(f"resampler.{k}")
            for k in list(self.resampler_defaults)
            if f"resampler.{k}" in self.values
        }
        ordered = {}
        for key, default in self.resampler_defaults.items():
            if key in given:
                ordered[f"resampler.{key}"] = given[key]
            else:
                ordered[f"resampler.{key}"] = default
                self.origins[f"resampler.{key}"] = DEFAULT
                self.mapped.append(
                    (
                        f"(not in {source_name})",
                        f"resampler.{key}: {yaml_value(default)}  (the default of conf/resampler/{self.resampler}.yaml)",
                    )
                )
        self.values = ordered | self.values


def convert(old, source: str, name: str | None = None) -> Preset:
    """Map a guide-format config (already parsed) to a Preset; every key it does not understand is
    reported in one ConfigError, and nothing is written."""
    if not isinstance(old, dict):
        raise ConfigError(
            f"{source}: expected a YAML mapping with sections {', '.join(SECTIONS)}, found {type_name(old)}"
        )
    converter = _Converter(old, source)
    converter.convert()
    if converter.problems:
        raise ConfigError(
            f"{source}: {len(converter.problems)} setting(s) not understood; nothing was written.\n  "
            + "\n  ".join(converter.problems)
        )
    source_name = Path(source).name
    converter.fill_resampler_defaults(source_name)
    preset_name = name or converter.experiment_name or Path(source).stem
    if not PRESET_NAME.match(preset_name):
        raise ConfigError(
            f"preset name {preset_name!r}: use letters, digits, '_', '-' and '.' (it becomes conf/experiment/<name>.yaml); "
            "choose one with --name"
        )
    values = {"experiment.name": converter.experiment_name or preset_name} | converter.values
    origins = {"experiment.name": "experiment.name" if converter.experiment_name else DEFAULT} | converter.origins
    mapped = converter.mapped
    if converter.experiment_name:
        mapped.insert(
            0,
            ("experiment.name", f"experiment.name: {yaml_value(converter.experiment_name)}  (names the run directory)"),
        )
    else:
        mapped.insert(
            0, ("(experiment.name not given)", f"experiment.name: {yaml_value(preset_name)}  (the preset's name)")
        )
    groups = dict(sorted(converter.groups.items(), key=lambda kv: kv[0] != "resampler"))
    return Preset(
        preset_name,
        source,
        converter.resampler,
        groups,
        values,
        origins,
        mapped,
        converter.notes,
        converter.description,
    )
