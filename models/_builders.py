"""A user's own Keras model, by import path: one interface with the presets.

A builder is a plain function `build(input_shape, num_classes, *, knob=default, ...)` returning an
uncompiled `keras.Model`. Its keyword-only parameters are the knobs a study may search or fix, each
typed by its default (int, float, bool, str). A study names it `"path/to/file.py:build"` (relative
to the working directory, or absolute) or `"package.module:build"` (importable).

A file is imported with `importlib.util.spec_from_file_location` under a module name of its own,
derived from its path and the sha256 of its content: an edited file is another module, and a
process keeps building with the version it validated. Keras is imported on first build only.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)

CONTRACT = "build(input_shape, num_classes, *, knob=default, ...) -> keras.Model (uncompiled)"
KINDS: dict[type, str] = {bool: "bool", int: "int", float: "float", str: "str"}
MODULE_PREFIX = "cnn_search_builder_"


class BuilderError(ValueError):
    """A builder cannot be loaded, or broke its contract; the message names it and the fix."""


class BuilderChangedError(ImportError):
    """The builder's file changed after this process validated the study (fatal: restart the worker)."""


def is_builder_reference(name: str) -> bool:
    """Whether an architecture is a user's builder ("file.py:build") rather than a preset name."""
    return ":" in name


@dataclass(frozen=True)
class BuilderParams:
    """What one build needs: the builder (and the content hash the study validated), the data's
    shape and class count, and the knob values."""

    builder: str
    sha256: str
    input_shape: tuple[int, ...]
    num_classes: int
    knobs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UserFunction:
    """A function of the user's by reference ("file.py:function"), with its file and that file's sha256."""

    reference: str
    source: Path
    sha256: str
    function: Callable[..., Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Builder(UserFunction):
    """A loaded builder: a user's function whose keyword-only parameters are its knobs."""

    knobs: dict[str, Any] = field(default_factory=dict)  # keyword-only parameter -> default

    family = "user"

    @property
    def name(self) -> str:
        return self.reference

    @property
    def kinds(self) -> dict[str, str]:
        """The searchable knobs' types, from their defaults (a knob with a default of another type
        exists, but a study cannot search or fix it)."""
        return {k: KINDS[type(v)] for k, v in self.knobs.items() if type(v) in KINDS}

    def knob_problem(self, knob: str) -> str | None:
        if knob not in self.knobs:
            return f"builder {self.reference} has no knob {knob!r}; its knobs: {sorted(self.knobs)}"
        if knob not in self.kinds:
            default = self.knobs[knob]
            return (f"knob {knob!r} of builder {self.reference} has a default of type {type(default).__name__} "
                    f"({default!r}); only int, float, bool and str knobs can be searched or fixed")
        return None

    def value_problem(self, knob: str, value: object) -> str | None:
        """None if `value` suits the knob's type (its default's): an int knob takes integers, a float
        knob any number, a bool knob true or false, a str knob text."""
        kind = self.kinds[knob]
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = {"bool": isinstance(value, bool), "int": numeric and isinstance(value, int), "float": numeric,
              "str": isinstance(value, str)}[kind]
        if ok:
            return None
        wanted = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}[kind]
        return f"{value!r} is not {wanted} (knob {knob!r} of {self.reference} defaults to {self.knobs[knob]!r})"

    def params(self, *, input_shape: tuple[int, ...], num_classes: int, **knobs: Any) -> BuilderParams:
        unknown = sorted(set(knobs) - set(self.knobs))
        if unknown:
            raise ValueError(f"builder {self.reference} has no knob {', '.join(unknown)}; "
                             f"its knobs are {sorted(self.knobs)}")
        return BuilderParams(self.reference, self.sha256, tuple(input_shape), num_classes, dict(knobs))


_LOADED: dict[tuple[str, str, str], Builder] = {}  # (file, sha256, function) -> what was loaded from that content


def load_function(reference: str, *, sha256: str | None = None) -> UserFunction:
    """Import any function of the user's the way a builder is imported (the same file rules, the same
    guard against a file changed since the study was validated); BuilderError naming the fix."""
    return load_builder(reference, sha256=sha256, read_knobs=False)


def load_builder(reference: str, *, sha256: str | None = None, read_knobs: bool = True) -> Builder:
    """Import the builder and read its knobs; BuilderError naming the file and the fix.
    `sha256`: the content the study validated; a process that loaded it keeps building with it.
    read_knobs False: any function (load_function), its signature not held to a builder's contract."""
    location, attr = _split(reference)
    path = _source(location, reference)
    loaded_as = attr if read_knobs else f"{attr}()"  # a builder and a plain function load apart
    if sha256 is not None and (str(path), sha256, loaded_as) in _LOADED:
        return _LOADED[(str(path), sha256, loaded_as)]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if sha256 is not None and digest != sha256:
        raise BuilderChangedError(f"builder file {path} changed after the study was validated (sha256 "
                                  f"{sha256[:12]}, now {digest[:12]}); restart the worker, which then refuses a "
                                  "changed builder, or restore the file")
    key = (str(path), digest, loaded_as)
    if key not in _LOADED:
        module = _import_file(path, digest) if _is_file(location) else _import_module(location, reference)
        function = _function(module, attr, reference)
        _LOADED[key] = Builder(reference, path, digest, function, _knobs(function, reference) if read_knobs else {})
    return _LOADED[key]


def _is_file(location: str) -> bool:
    return location.endswith(".py") or "/" in location or "\\" in location


def _split(reference: object) -> tuple[str, str]:
    location, _, attr = str(reference).rpartition(":")
    module_like = all(part.isidentifier() for part in location.split("."))
    if not isinstance(reference, str) or not location or not attr.isidentifier() or not (
            _is_file(location) or module_like):
        raise BuilderError(f"builder {reference!r}: give \"path/to/file.py:function\" (relative to the working "
                           "directory, or absolute) or \"package.module:function\"")
    return location, attr


def _source(location: str, reference: str) -> Path:
    """The file the builder's code is in (a module's origin), which the drift guard hashes."""
    if _is_file(location):
        path = Path(location).expanduser()
        path = path if path.is_absolute() else Path.cwd() / path
        if not path.is_file():
            raise BuilderError(f"builder file {location} not found (looked for {path}); a relative path is relative "
                               f"to the working directory ({Path.cwd()}); in a container, where the builders folder "
                               f"is mounted at /models_dir, write /models_dir/{Path(location).name}:"
                               f"{reference.rpartition(':')[2]}")
        return path.resolve()
    try:
        found = importlib.util.find_spec(location)
    except (ImportError, ValueError) as exc:
        found, why = None, f" ({type(exc).__name__}: {exc})"
    else:
        why = ""
    if found is None or not found.origin or not Path(found.origin).is_file():
        raise BuilderError(f"builder {reference}: no importable module {location!r}{why}; install it, add its "
                           "folder to PYTHONPATH, or name the file instead: \"path/to/file.py:function\"")
    return Path(found.origin).resolve()


def _import_file(path: Path, digest: str) -> ModuleType:
    """The file as a module of its own (its path and content in the name); nothing enters our globals."""
    name = f"{MODULE_PREFIX}{hashlib.sha256(str(path).encode()).hexdigest()[:8]}_{digest[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise BuilderError(f"builder file {path} cannot be imported as Python; give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling inside the file look their module up there
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[name]
        raise BuilderError(f"builder file {path} has a syntax error at line {exc.lineno}: {exc.msg}; "
                           "fix the file") from None
    except Exception as exc:
        del sys.modules[name]
        raise BuilderError(f"importing builder file {path} failed: {type(exc).__name__}: {exc}; fix the file "
                           "(a builder file defines functions and imports what they use, nothing more)") from exc
    logger.info("loaded builder file %s (sha256 %s)", path, digest[:12])
    return module


def _import_module(location: str, reference: str) -> ModuleType:
    try:
        return importlib.import_module(location)
    except SyntaxError as exc:
        raise BuilderError(f"builder {reference}: {exc.filename} has a syntax error at line {exc.lineno}: "
                           f"{exc.msg}; fix the file") from None
    except Exception as exc:
        raise BuilderError(f"builder {reference}: importing {location} failed: {type(exc).__name__}: {exc}; "
                           "fix the module") from exc


def _function(module: ModuleType, attr: str, reference: str) -> Callable[..., Any]:
    function = getattr(module, attr, None)
    if function is None:
        defined = sorted(n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_")
                         and v.__module__ == module.__name__)
        raise BuilderError(f"builder {reference}: {module.__file__} has no function {attr!r} (it defines: "
                           f"{', '.join(defined) or 'no function'}); write {attr}(input_shape, num_classes, *, "
                           "knob=default, ...) there, or name one it has")
    if not callable(function):
        raise BuilderError(f"builder {reference}: {attr!r} is a {type(function).__name__}, not a function; "
                           f"write {CONTRACT}")
    return function


def _knobs(function: Callable[..., Any], reference: str) -> dict[str, Any]:
    """The keyword-only parameters and their defaults, checked against the contract."""
    try:
        params = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError) as exc:
        raise BuilderError(f"builder {reference}: its signature cannot be read ({exc}); write {CONTRACT}") from None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2 and not any(p.kind == p.VAR_POSITIONAL for p in params):
        raise BuilderError(f"builder {reference} takes {[p.name for p in positional]} positionally; it must take "
                           f"the images' shape and the class count first: {CONTRACT}")
    if len(positional) > 2:
        raise BuilderError(f"builder {reference}: parameter {positional[2].name!r} comes before '*'; make every "
                           f"knob keyword-only: {CONTRACT}")
    knobs = {p.name: p.default for p in params if p.kind == p.KEYWORD_ONLY}
    missing = [name for name, default in knobs.items() if default is inspect.Parameter.empty]
    if missing:
        raise BuilderError(f"builder {reference}: knob(s) {', '.join(missing)} have no default; give each one "
                           "(the value a study uses unless it searches or fixes the knob)")
    return knobs


# --- building: every trial, and once at create time ---------------------------------------------


def architecture(name: str, *, sha256: str | None = None) -> Any:
    """A preset (models/_presets.py) by name, or a user's Builder by reference; `sha256`: the builder
    content a study validated."""
    from models._presets import get_preset

    return load_builder(name, sha256=sha256) if is_builder_reference(name) else get_preset(name)


def build(params: Any, *, name: str | None = None) -> Any:
    """The uncompiled model `params` describes: a preset's typed params, or a user builder's call."""
    if isinstance(params, BuilderParams):
        return build_model(params)
    from models._families import build as build_family

    return build_family(params, name=name)


def build_model(params: BuilderParams) -> Any:
    """Call the builder on the data's shape with the knob values. What the builder raises passes
    through (the caller decides what a failure means); a result that breaks the contract is a
    BuilderError."""
    import keras

    builder = load_builder(params.builder, sha256=params.sha256)
    model = builder.function(tuple(params.input_shape), params.num_classes, **params.knobs)
    if not isinstance(model, keras.Model):
        raise BuilderError(f"builder {params.builder} returned {type(model).__name__}, not a keras.Model; return "
                           "keras.Model(inputs, outputs) or a keras.Sequential, uncompiled")
    _check_input(model, params)
    shape = _declared_output_shape(model)
    if shape is not None and shape != (None, params.num_classes):
        raise BuilderError(f"builder {params.builder} returned a model whose output is {shape}, not "
                           f"(None, {params.num_classes}) for {params.num_classes} classes; end it with "
                           "layers.Dense(num_classes, activation='softmax')")
    return model


def _check_input(model: Any, params: BuilderParams) -> None:
    """One input of the data's shape, declared: the service puts its pixel, augmentation and
    normalisation layers in front of it."""
    try:
        shape = model.input_shape
    except (AttributeError, ValueError, RuntimeError):
        shape = None
    shape = tuple(shape) if isinstance(shape, tuple) else shape
    if shape != (None, *params.input_shape):
        found = "no declared input (a subclassed model?)" if shape is None else f"input {shape}"
        raise BuilderError(f"builder {params.builder} returned a model with {found}, not (None, "
                           f"{', '.join(map(str, params.input_shape))}); start it with keras.Input(input_shape) "
                           "(functional, or the first entry of a keras.Sequential)")


def _declared_output_shape(model: Any) -> Any:
    """The functional output shape (a list for several outputs); None for a model that has none yet
    (subclassed, unbuilt)."""
    try:
        shape = model.output_shape
    except (AttributeError, ValueError, RuntimeError):
        return None
    return tuple(shape) if isinstance(shape, tuple) else shape


def check_model(params: BuilderParams, *, loss: str = "sparse_categorical_crossentropy",
                features: bool = False) -> None:
    """Build once and check the contract before a study is created: a keras.Model, taking images of
    the data's shape, giving (None, num_classes) probabilities, compiling and evaluating with `loss`;
    `features`: with a flat layer named 'features' to cut at (feature_cache.base). Runs on the CPU,
    so a process that starts GPU workers next holds no GPU memory. BuilderError on a failure."""
    import keras
    import numpy as np

    _tensorflow_without_gpus()
    knobs = {**load_builder(params.builder, sha256=params.sha256).knobs, **params.knobs}
    where = f"builder {params.builder} (knobs {knobs}, input_shape {params.input_shape})"
    with keras.device("cpu:0"):
        try:
            model = build_model(params)
        except BuilderError:
            raise
        except Exception as exc:
            raise BuilderError(f"{where} raised {type(exc).__name__}: {exc}; fix the builder or these defaults "
                               "(a trial fails with reason 'build' when some knob values cannot be built, but the "
                               "defaults must build)") from exc
        x, y = np.zeros((2, *params.input_shape), "float32"), np.zeros((2,), "int32")
        _check_output(model, x, where, params.num_classes)
        try:
            model.compile(optimizer="adam", loss=loss)
            model.test_on_batch(x, y)
        except Exception as exc:
            raise BuilderError(f"{where}: the model does not compile and evaluate with the study's loss {loss} "
                               f"({type(exc).__name__}: {exc}); return an uncompiled model whose output is one "
                               "softmax over the classes") from exc
        if features:
            _check_features(model, where)


def _check_output(model: Any, x: Any, where: str, num_classes: int) -> None:
    import numpy as np

    try:
        out = np.asarray(model(x, training=False))
    except Exception as exc:
        raise BuilderError(f"{where}: the model cannot take a batch of images of shape {x.shape[1:]} "
                           f"({type(exc).__name__}: {exc}); build it for the input_shape it is given") from exc
    if out.shape != (len(x), num_classes):
        raise BuilderError(f"{where}: the model's output is (None, {', '.join(map(str, out.shape[1:]))}), not "
                           f"(None, {num_classes}); end it with layers.Dense(num_classes, activation='softmax')")
    if not (np.all(out >= -1e-6) and np.allclose(out.sum(axis=1), 1.0, atol=1e-2)):
        raise BuilderError(f"{where}: the model's outputs are not probabilities (rows sum to "
                           f"{np.round(out.sum(axis=1), 3).tolist()}); the study's loss takes a softmax: end it "
                           "with layers.Dense(num_classes, activation='softmax')")


def _check_features(model: Any, where: str) -> None:
    try:
        shape = tuple(model.get_layer("features").output.shape)
    except ValueError:
        raise BuilderError(f"{where}: as feature_cache.base the model needs a layer named 'features' whose output "
                           "heads train on, e.g. layers.Flatten(name='features')") from None
    except AttributeError:
        raise BuilderError(f"{where}: as feature_cache.base the model must be functional or Sequential (its "
                           "'features' layer needs a symbolic output to cut at)") from None
    if len(shape) != 2:
        raise BuilderError(f"{where}: its 'features' layer outputs {shape}; make it flat, e.g. "
                           "layers.Flatten(name='features') or layers.GlobalAveragePooling2D(name='features')")


def _tensorflow_without_gpus() -> None:
    """Before TensorFlow's runtime starts in this process, hide the GPUs from it (it would reserve
    their memory for the life of the process); a runtime already started is left as it is."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        logger.debug("TensorFlow's runtime already started; the builder check runs where it placed it")
