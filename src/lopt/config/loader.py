"""Reading config YAML: YAML 1.2 scalars and duplicate keys as errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from lopt.config.base import ConfigError
from lopt.config.errors import _format_loc

_BOOL_TAG = "tag:yaml.org,2002:bool"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, changed where YAML 1.1 defeats the config's validation.

    - Only ``true`` / ``false`` (``True``, ``TRUE``, ...) are booleans, as in YAML 1.2:
      YAML 1.1 also reads ``on``/``off``/``yes``/``no`` as booleans, so
      ``distributed: {mode: off}`` never reached the allowed value ``'off'``. These words
      are now strings (a bool field rejects them, naming the key).
    - ``1e-3`` (an exponent without a dot or sign) is a float, as in YAML 1.2, not a string.
    - A key given twice in one mapping is a :class:`ConfigError` naming the file, the key
      path and both lines (YAML 1.1 silently keeps the last one). Keys brought in by a
      ``<<`` merge may still be overridden, as YAML intends.
    """

    source = "<config>"

    def construct_document(self, node: yaml.Node) -> Any:
        self._check_duplicates(node, (), set())
        return super().construct_document(node)

    def _check_duplicates(self, node: yaml.Node, path: tuple[Any, ...], seen: set[int]) -> None:
        if id(node) in seen:  # an alias: checked where its anchor is
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check_duplicates(item, path + (i,), seen)
        elif isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Mark] = {}
            for key_node, value_node in node.value:
                key = None
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                    key = self.construct_object(key_node)
                    mark = key_node.start_mark
                    if key in first:
                        at, before = f"line {mark.line + 1}", f"line {first[key].line + 1}"
                        if mark.line == first[key].line:  # a flow mapping: {seed: 1, seed: 2}
                            at, before = f"{at}, column {mark.column + 1}", f"column {first[key].column + 1}"
                        raise ConfigError(
                            f"{self.source}: duplicate key '{_format_loc(path + (key,))}' at {at} "
                            f"(already given at {before}); each key may appear only once"
                        )
                    first[key] = mark
                self._check_duplicates(value_node, path + ((key,) if key is not None else ()), seen)


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_ConfigLoader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str = "<config>") -> Any:
    """Parse config YAML text (see :class:`_ConfigLoader`); ``source`` names it in errors.

    Raises:
        ConfigError: a key is duplicated.
        yaml.YAMLError: the text is not YAML.
    """
    loader = _ConfigLoader(text)
    loader.source = source
    loader.name = source  # syntax errors say `in "<source>", line L` instead of "<unicode string>"
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_yaml(path: str | Path) -> Any:
    """Read a config file (experiment or study) into plain data, without validating it.

    Raises:
        ConfigError: the file is missing, is not YAML, or repeats a key.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start}: {exc.reason}); "
                          "a config is YAML text such as configs/default.yaml") from None
    try:
        raw = parse_yaml(text, str(path))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if raw is None:
        raise ConfigError(f"{path}: the file is empty (or only comments); expected a mapping of keys "
                          "such as configs/default.yaml")
    return raw
