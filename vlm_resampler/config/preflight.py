"""Before Hydra runs anything: parse the command line, expand sweeps into jobs, compose and
validate each job, and stop with a short message (exit 2) at the first bad one."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from vlm_resampler.catalog import CONF_DIR
from vlm_resampler.errors import ConfigError, UnknownResamplerKey
from vlm_resampler.suggest import did_you_mean

# Hydra flags that take a value in the next argument.
FLAGS_WITH_VALUE = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
    "--info",
    "-i",
}


def split_argv(argv: list[str]) -> tuple[list[str], bool]:
    overrides, multirun, skip = [], False, False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("-m", "--multirun"):
            multirun = True
        elif arg in FLAGS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides, multirun


def config_groups(conf_dir: Path | None = None) -> dict[str, list[str]]:
    """Group path (e.g. 'resampler', 'hydra/launcher') -> its options (yaml file stems; for Hydra's
    own groups also the options Hydra and its plugins register, e.g. hydra/launcher=basic)."""
    conf_dir = conf_dir or CONF_DIR
    groups = {}
    for folder in sorted(p for p in conf_dir.rglob("*") if p.is_dir()):
        options = sorted(f.stem for f in folder.glob("*.yaml"))
        if options:
            groups[folder.relative_to(conf_dir).as_posix()] = options
    for group in [g for g in groups if g.startswith("hydra/")]:
        groups[group] = sorted(set(groups[group]) | set(registered_options(group)))
    return groups


def registered_options(group: str) -> list[str]:
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()  # scanning the plugins registers their options
    try:
        return [name.removesuffix(".yaml") for name in ConfigStore.instance().list(group)]
    except OSError:
        return []


def sweep_jobs(
    config_name: str, overrides: list[str], conf_dir: Path | None = None
) -> tuple[list[list[str]], list[str]]:
    """(jobs, hydra overrides) of a -m command line: each job's task overrides exactly as Hydra's
    BasicSweeper makes them (its `split_arguments`), the config's `hydra.sweeper.params` first, as
    Hydra puts them. The one expansion: preflight validates these jobs and submission launches them.
    An Optuna study's `hydra.sweeper.params` is its search space, not jobs: only the command line's
    sweeps are expanded then (sweeps/study.py validates each trial)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import create_config_search_path
    from hydra.core.override_parser.overrides_parser import OverridesParser

    conf_dir = conf_dir or CONF_DIR
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(conf_dir)))
    parser = OverridesParser.create(config_loader=loader)
    parsed = parser.parse_overrides(overrides)
    hydra_overrides = [o.input_line for o in parsed if o.is_hydra_override()]
    task = [o.input_line for o in parsed if not o.is_hydra_override()]
    # What Hydra composes for the sweeper itself: the command line without its sweeps.
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    hydra_cfg = compose(config_name, fixed, with_hydra=True, conf_dir=conf_dir).hydra
    if hydra_cfg.runtime.choices.get("hydra/sweeper") == "basic" and hydra_cfg.sweeper.get("params"):
        params = OmegaConf.to_container(hydra_cfg.sweeper.params)
        task = [f"{key}={value}" for key, value in params.items()] + task
    batches = BasicSweeper.split_arguments(parser.parse_overrides(task), max_batch_size=None)
    return [list(job) for job in batches[0]], hydra_overrides


def check_group_options(parsed: list, groups: dict[str, list[str]]) -> None:
    """An unknown option of a config group, with the closest valid names (no composition needed)."""
    for o in parsed:
        value = o.value()
        if o.key_or_group in groups and value is not None and str(value) not in groups[o.key_or_group]:
            key = o.key_or_group
            raise ConfigError(
                f"{key}={value}: no such option.{did_you_mean(str(value), groups[key])}\n"
                f"  options for {key}: {', '.join(groups[key])}"
            )


def check_keys(parsed: list, groups: dict[str, list[str]], cfg: DictConfig) -> None:
    """An overridden key that `cfg` lacks, with the closest names (`+key=` adds one: not checked)."""
    from hydra.core.override_parser.types import OverrideType

    for o in parsed:
        key = o.key_or_group
        if key.startswith("hydra") or key in groups or o.type in (OverrideType.ADD, OverrideType.FORCE_ADD):
            continue
        check_key_exists(cfg, key)


def check_key_exists(cfg: DictConfig, key: str) -> None:
    parts = key.split(".")
    node = cfg
    for depth, part in enumerate(parts):
        if not isinstance(node, DictConfig) or part not in node.keys():
            where = ".".join(parts[:depth]) or "the config"
            siblings = [k for k in node.keys() if not str(k).startswith("_")] if isinstance(node, DictConfig) else []
            message = f"{key}: unknown key {part!r} in {where}.{did_you_mean(part, siblings)}"
            error = ConfigError
            if parts[0] == "resampler" and depth == 1:
                from vlm_resampler.catalog import unknown_resampler_key

                message, error = unknown_resampler_key(part, siblings), UnknownResamplerKey
            if siblings:
                message += f"\n  valid keys here: {', '.join(map(str, siblings))}"
            raise error(message)
        if OmegaConf.is_missing(node, part):
            return
        node = node[part]


def compose(
    config_name: str, overrides: list[str], with_hydra: bool = False, conf_dir: Path | None = None
) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(conf_dir or CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=with_hydra)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(str(err).strip()) from err


def preflight(
    config_name: str, argv: list[str], validate, before_validate=None, single_run_check=None, sweep_validate=None
) -> list[DictConfig]:
    """Compose every job of the command line, then validate each; on error print and exit 2.

    `before_validate(configs)` runs once between the two phases (validation imports
    transformers, and the hub must be configured before that); a ConfigError it raises is
    reported like a validation error. `single_run_check(cfg)` gets
    the config with its `hydra` node, for a run without -m. `sweep_validate(cfg, launcher)`, where
    given, validates each job of a -m command line in place of `validate`, with its hydra.launcher."""
    overrides, multirun = split_argv(argv)
    groups = config_groups()
    try:
        if multirun:
            task_jobs, hydra_overrides = sweep_jobs(config_name, overrides)
            jobs = [[*hydra_overrides, *job] for job in task_jobs]
        else:
            jobs = [overrides]
    except Exception as err:  # the override grammar (OverrideParseException): say what, no traceback
        print(
            f"error: the sweep cannot be expanded into jobs; nothing was started.\n  {str(err).strip()}",
            file=sys.stderr,
        )
        sys.exit(2)
    run_check = single_run_check if not multirun else None
    job_validate = sweep_validate if multirun else None
    needs_hydra = run_check is not None or job_validate is not None
    composed, failures = [], []
    for job in jobs:
        try:
            composed.append((job, *compose_job(config_name, job, groups, with_hydra=needs_hydra)))
        except ConfigError as err:
            failures.append((job, err))
    if not failures and before_validate is not None:
        try:
            before_validate([cfg for _, cfg, _ in composed])
        except ConfigError as err:
            failures.append(([], err))
    for job, cfg, with_hydra in composed if not failures else []:
        try:
            if job_validate is not None:
                job_validate(cfg, with_hydra.hydra.launcher)
            else:
                validate(cfg)
            if run_check is not None:
                run_check(with_hydra)
        except ConfigError as err:
            failures.append((job, err))
    if failures:
        print(
            f"error: {len(failures)} of {len(jobs)} job(s) have an invalid config; nothing was started.",
            file=sys.stderr,
        )
        for job, error in failures[:20]:
            label = " ".join(o for o in job if not o.lstrip("+~").startswith(("hydra.", "hydra/"))) or "(no overrides)"
            prefix = f"[{label}] " if len(jobs) > 1 else ""
            print(f"  {prefix}{error}", file=sys.stderr)
        if len(failures) > 20:
            print(f"  ... and {len(failures) - 20} more job(s)", file=sys.stderr)
        if multirun and any(isinstance(error, UnknownResamplerKey) for _, error in failures):
            print(
                "hint: a key that only some resampler types have is swept per type, through one experiment preset "
                "per type: -m 'experiment=glob(compare_*)' (see conf/experiment/compare_*.yaml)",
                file=sys.stderr,
            )
        sys.exit(2)
    return [cfg for _, cfg, _ in composed]


def compose_job(
    config_name: str, job: list[str], groups: dict[str, list[str]], with_hydra: bool = False
) -> tuple[DictConfig, DictConfig | None]:
    """The job's config, and the same with its `hydra` node where asked, from one composition (a
    command spends ~0.2 s on each). Unknown groups, options and keys are refused with the closest
    valid names, before Hydra's own message where Hydra refuses the job."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(job)
    check_group_options(parsed, groups)
    try:
        composed = compose(config_name, job, with_hydra=with_hydra)
    except ConfigError:
        check_keys(parsed, groups, compose(config_name, [o.input_line for o in parsed if o.key_or_group in groups]))
        raise
    check_keys(parsed, groups, composed)
    if not with_hydra:
        return composed, None
    cfg = copy.deepcopy(composed)
    with open_dict(cfg):
        del cfg["hydra"]  # what Hydra's compose(return_hydra_config=False) does
    return cfg, composed


def backbone_names(configs: list[DictConfig]) -> list[str]:
    names = []
    for cfg in configs:
        for key in ("vision_encoder", "language_model"):
            node = OmegaConf.select(cfg, f"model.{key}")
            if node is not None:
                names.append(str(node.name_or_path))
    return names
