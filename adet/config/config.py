"""The config node: fvcore's CfgNode (YAML, ``_BASE_`` inheritance, ``KEY VALUE`` overrides) with errors a user can act
on: a bad key or value names the file and the key, and an unknown key comes with the closest valid one."""

from __future__ import annotations

import copy
import difflib
import os
from typing import Any, Iterator

import yaml
from fvcore.common.config import CfgNode as _FvcoreCfgNode

from adet.errors import ConfigError

from . import compat
from .score_threshold import candidate_threshold


def _full_keys(node: CfgNode, prefix: str = "") -> Iterator[str]:
    for key, value in node.items():
        full = f"{prefix}{key}"
        if isinstance(value, _FvcoreCfgNode):
            yield from _full_keys(value, full + ".")
        else:
            yield full


def closest_key(root: CfgNode, full_key: str) -> str | None:
    """The valid key that most resembles ``full_key`` (a typo, or the right leaf under the wrong parent)."""
    keys = list(_full_keys(root))
    match = difflib.get_close_matches(full_key, keys, n=1, cutoff=0.6)
    if match:
        return match[0]
    leaf = full_key.rsplit(".", 1)[-1]
    by_leaf = {k.rsplit(".", 1)[-1]: k for k in keys}
    match = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)
    return by_leaf[match[0]] if match else None


def _unknown_key_error(root: CfgNode, full_key: str, source: str) -> ConfigError:
    hint = closest_key(root, full_key)
    suggestion = f" (did you mean '{hint}'?)" if hint else ""
    return ConfigError(f"{source}: unknown config key '{full_key}'{suggestion}")


def _type_name(value: Any) -> str:
    return {bool: "a bool", int: "an int", float: "a float", str: "a string", list: "a list",
            tuple: "a list", type(None): "None"}.get(type(value), type(value).__name__)


def _coerce(value: Any, default: Any, full_key: str, source: str) -> Any:
    """Check ``value`` against the type of ``default`` with yacs' rules, plus int -> float."""
    if default is None or value is None or type(value) is type(default):
        return value
    if isinstance(default, float) and type(value) is int:
        return float(value)
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(default)(value)
    raise ConfigError(f"{source}: {full_key} expects {_type_name(default)} (default {default!r}), got {value!r}")


class CfgNode(_FvcoreCfgNode):
    """detectron2-style config node. Use :func:`adet.config.get_cfg` to get one holding every default."""

    def __getattr__(self, name: str):
        if name in self:
            return self[name]
        if name == "ROI_HEADS" and "FCOS" in self:  # cfg.MODEL.ROI_HEADS in a detectron2 tutorial script
            return RoiHeadsAlias(self)
        raise AttributeError(name)

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False) -> None:
        if os.path.isdir(cfg_filename):
            raise ConfigError(f"{cfg_filename}: is a folder, not a config file")
        if not os.path.isfile(cfg_filename):
            raise ConfigError(f"{cfg_filename}: no such config file")
        self._merge_dict(self.load_yaml_with_base(cfg_filename), self, "", cfg_filename)

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False, _chain: tuple[str, ...] = ()) -> dict:
        """The YAML mapping of ``filename`` merged over its ``_BASE_`` files (a name or a list; relative to the file,
        or a packaged config name). Only plain YAML is read (``allow_unsafe`` is accepted and ignored)."""
        path = os.path.realpath(filename)
        if path in _chain:
            loop = " -> ".join(os.path.basename(p) for p in (*_chain, path))
            raise ConfigError(f"{filename}: its _BASE_ chain loops back to it ({loop})")
        try:
            with open(filename, encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{filename}: not valid YAML ({' '.join(str(e).split())[:200]})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{filename}: not a text file") from None
        except OSError as e:
            raise ConfigError(f"{filename}: cannot be read ({e.strerror or e})") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(f"{filename}: expected a mapping of config keys at the top level, found a "
                              f"{type(data).__name__}")
        bases = data.pop(BASE_KEY, None)
        if bases is None:
            return data
        merged: dict = {}
        for base in bases if isinstance(bases, list) else [bases]:
            _merge_yaml(cls.load_yaml_with_base(_base_path(base, filename), _chain=(*_chain, path)), merged, "",
                        filename)
        _merge_yaml(data, merged, "", filename)
        return merged

    def merge_from_other_cfg(self, cfg_other: _FvcoreCfgNode) -> None:
        self._merge_dict(cfg_other, self, "", "config")

    def merge_from_list(self, cfg_list: list) -> None:
        """Apply ``["KEY", value, "KEY", value, ...]`` overrides, e.g. trailing command-line arguments."""
        if len(cfg_list) % 2 != 0:
            raise ConfigError(f"command line: overrides must be KEY VALUE pairs, got an odd count: {list(cfg_list)}")
        for full_key, raw in zip(cfg_list[0::2], cfg_list[1::2]):
            if compat.is_known(full_key) and not self._has_key(full_key):
                compat.drop(full_key, self._decode_cfg_value(raw), "command line")
                continue
            node, leaf = self, full_key
            parts = full_key.split(".")
            for part in parts[:-1]:
                if part not in node or not isinstance(node[part], _FvcoreCfgNode):
                    raise _unknown_key_error(self, full_key, "command line")
                node = node[part]
            leaf = parts[-1]
            if leaf not in node or isinstance(node[leaf], _FvcoreCfgNode):
                raise _unknown_key_error(self, full_key, "command line")
            node[leaf] = _coerce(self._decode_cfg_value(raw), node[leaf], full_key, "command line")

    def _has_key(self, full_key: str) -> bool:
        node = self
        for part in full_key.split("."):
            if not isinstance(node, _FvcoreCfgNode) or part not in node:
                return False
            node = node[part]
        return True

    def _merge_dict(self, new: dict, into: _FvcoreCfgNode, prefix: str, source: str) -> None:
        for key, raw in new.items():
            full_key = prefix + key
            if key not in into:
                if compat.is_known(full_key):
                    compat.drop(full_key, self._decode_cfg_value(copy.deepcopy(raw)), source)
                    continue
                if into.is_new_allowed():
                    into[key] = self._decode_cfg_value(copy.deepcopy(raw))
                    continue
                raise _unknown_key_error(self, full_key, source)
            if isinstance(into[key], _FvcoreCfgNode):
                if not isinstance(raw, dict):
                    raise ConfigError(f"{source}: {full_key} is a group of keys, got the value {raw!r}")
                self._merge_dict(raw, into[key], full_key + ".", source)
            else:
                value = self._decode_cfg_value(copy.deepcopy(raw))
                into[key] = _coerce(value, into[key], full_key, source)


class RoiHeadsAlias:
    """``cfg.MODEL.ROI_HEADS`` as detectron2 scripts set it: ``NUM_CLASSES`` is EmbedMask's MODEL.FCOS.NUM_CLASSES
    and ``SCORE_THRESH_TEST`` t its final-score threshold (MODEL.FCOS.INFERENCE_TH_TEST t^2, as ``adet.load``'s
    ``confidence``: scores are sqrt(class x centerness)); the ROI sampling keys have no counterpart and are ignored
    with a warning. Only attribute access is aliased: in a file or on the command line these keys are dropped."""

    def __init__(self, model: CfgNode):
        object.__setattr__(self, "_fcos", model.FCOS)

    def __getattr__(self, name: str):
        if name == "NUM_CLASSES":
            return self._fcos.NUM_CLASSES
        if name == "SCORE_THRESH_TEST":
            return self._fcos.INFERENCE_TH_TEST ** 0.5
        raise AttributeError(f"MODEL.ROI_HEADS.{name}: EmbedMask has no ROI heads (its keys are under MODEL.FCOS "
                             "and MODEL.EMBEDMASK)")

    def __setattr__(self, name: str, value) -> None:
        if name == "NUM_CLASSES":
            self._fcos.NUM_CLASSES = int(value)
        elif name == "SCORE_THRESH_TEST":
            self._fcos.INFERENCE_TH_TEST = candidate_threshold(value, "MODEL.ROI_HEADS.SCORE_THRESH_TEST")
        else:
            compat.logger.warning("MODEL.ROI_HEADS.%s %r has no effect on EmbedMask (it has no ROI heads); ignored",
                                  name, value)
            return
        compat.logger.info("MODEL.ROI_HEADS.%s %r set EmbedMask's MODEL.FCOS.%s", name, value,
                           "NUM_CLASSES" if name == "NUM_CLASSES" else "INFERENCE_TH_TEST (squared)")


BASE_KEY = "_BASE_"
# The packaged configs (``EmbedMask/MS_R_50_1x.yaml``...), shipped inside the package as detectron2's model zoo ships
# its own; the source tree's ``configs/`` folder is a link to this folder.
CONFIG_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "model_zoo", "configs")


def _base_path(base, filename: str) -> str:
    """The file a ``_BASE_`` entry of ``filename`` names: relative to it, absolute, or a packaged config name."""
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{filename}: _BASE_ must be a config file name (or a list of them), got {base!r}")
    if base.startswith(("http://", "https://")):
        raise ConfigError(f"{filename}: _BASE_ {base}: only local files (nothing is downloaded)")
    path = os.path.join(os.path.dirname(filename), os.path.expanduser(base))
    if os.path.isfile(path):
        return path
    packaged = os.path.join(CONFIG_ROOT, base)
    if not os.path.isabs(base) and os.path.isfile(packaged):
        return packaged
    raise ConfigError(f"{filename}: its _BASE_ file {path} does not exist")


def _merge_yaml(source: dict, into: dict, prefix: str, filename: str) -> None:
    """YAML mapping ``source`` over ``into`` (a file over its bases)."""
    for key, value in source.items():
        if isinstance(value, dict) and key in into:
            if not isinstance(into[key], dict):
                raise ConfigError(f"{filename}: {prefix}{key} is a group of keys here but a value in its _BASE_")
            _merge_yaml(value, into[key], f"{prefix}{key}.", filename)
        else:
            into[key] = value


def list_configs() -> list[str]:
    """Packaged config names, e.g. ``EmbedMask/MS_R_50_1x.yaml``."""
    names = []
    for folder, _, files in os.walk(CONFIG_ROOT):
        names += [os.path.relpath(os.path.join(folder, f), CONFIG_ROOT) for f in files if f.endswith(".yaml")]
    return sorted(n.replace(os.sep, "/") for n in names)


def get_config_file(name: str) -> str:
    """The file of a config given as a path or a packaged name; ConfigError naming the closest one if neither."""
    if os.path.isfile(name):
        return name
    packaged = name.replace("\\", "/")
    for prefix in ("configs/", "./configs/"):
        if packaged.startswith(prefix):
            packaged = packaged[len(prefix):]
    candidate = os.path.join(CONFIG_ROOT, packaged)
    if os.path.isfile(candidate):
        return candidate
    if os.path.isdir(name) or os.path.isdir(candidate):
        raise ConfigError(f"--config-file {name}: is a folder, not a config file")
    known = list_configs()
    hint = difflib.get_close_matches(packaged, known, n=1, cutoff=0.5)
    suggestion = f" (did you mean '{hint[0]}'?)" if hint else f"; packaged configs: {', '.join(known)}"
    raise ConfigError(f"--config-file {name}: no such file, and not a packaged config{suggestion}")
