"""The backend registry: pluggy plugins found through entry points, built lazily."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NoReturn, cast

import pluggy

from comm_core import hookspecs
from comm_core._config import get_setting
from comm_core._entrypoints import EntryPoint, entry_points
from comm_core._record import Record
from comm_core.abc import Backend
from comm_core.exceptions import BackendConflictError, PluginError, UnknownSchemeError

if TYPE_CHECKING:
    # The wire protocol (and msgpack) is imported when a stream comm first needs it.
    from comm_core.protocol import SerializerFamily

__all__ = [
    "ENTRY_POINT_GROUP",
    "BackendInfo",
    "Registry",
    "backends",
    "get_backend",
    "get_registry",
    "register_backend",
    "register_plugin",
]

#: The entry point group in which distributions publish their comm plugin.
ENTRY_POINT_GROUP = "comm_core.backends"


class BackendInfo(Record):
    """Where a registered backend comes from (immutable; compared by value)."""

    __slots__ = ("scheme", "backend_class", "plugin", "distribution", "version")  # noqa: RUF023 (field order)

    #: The URI scheme.
    scheme: str
    #: The :class:`~comm_core.Backend` subclass.
    backend_class: type[Backend]
    #: The plugin that returned it (entry point name, or the name given in code).
    plugin: str
    #: The distribution that published the plugin, or ``None`` for one registered in code.
    distribution: str | None
    #: The version of that distribution.
    version: str | None

    def __init__(
        self,
        scheme: str,
        backend_class: type[Backend],
        plugin: str,
        distribution: str | None = None,
        version: str | None = None,
    ) -> None:
        self._assign(
            scheme=scheme,
            backend_class=backend_class,
            plugin=plugin,
            distribution=distribution,
            version=version,
        )

    @property
    def capabilities(self) -> frozenset[str]:
        """The capabilities the backend declares."""
        return self.backend_class.capabilities

    def describe(self) -> str:
        """``"comm-tcp 0.1.0 (plugin 'tcp')"`` or ``"plugin 'x' (registered in code)"``."""
        if self.distribution is None:
            return f"plugin {self.plugin!r} (registered in code)"
        return f"{self.distribution} {self.version} (plugin {self.plugin!r})"


class _PluginOrigin(Record):
    __slots__ = ("name", "distribution", "version")  # noqa: RUF023 (field order)

    name: str
    distribution: str | None
    version: str | None

    def __init__(self, name: str, distribution: str | None, version: str | None) -> None:
        self._assign(name=name, distribution=distribution, version=version)


class Registry:
    """Backends by scheme, gathered from plugins on first use.

    Nothing is imported or scanned until a backend is first needed. Then every
    entry point of *group* is loaded (unless autoload is off: the
    ``COMM_DISABLE_PLUGIN_AUTOLOAD`` environment variable or *autoload*), each
    plugin's hooks are validated, and each plugin's
    ``comm_register_backends()`` is called.

    Args:
        group: the entry point group to load plugins from.
        autoload: load entry points; ``None`` reads the
            ``disable_plugin_autoload`` setting.
    """

    def __init__(self, *, group: str = ENTRY_POINT_GROUP, autoload: bool | None = None) -> None:
        self.group = group
        self._autoload = autoload
        self._lock = threading.RLock()
        self._pm: pluggy.PluginManager | None = None
        self._origins: dict[str, _PluginOrigin] = {}
        self._infos: dict[str, BackendInfo] | None = None
        self._conflicts: dict[str, list[BackendInfo]] = {}
        self._code_backends: dict[str, BackendInfo] = {}
        self._instances: dict[str, Backend] = {}
        self._families: Mapping[str, SerializerFamily] | None = None

    # -- building -------------------------------------------------------------------

    def _plugin_manager(self) -> pluggy.PluginManager:
        with self._lock:
            if self._pm is None:
                pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
                pm.add_hookspecs(hookspecs)
                autoload = self._autoload
                if autoload is None:
                    autoload = not get_setting("disable_plugin_autoload")
                # Forget the plugins of an earlier attempt that failed.
                self._origins.clear()
                if autoload:
                    for ep in entry_points(group=self.group):
                        self._load_entry_point(pm, ep)
                self._check(pm)
                self._pm = pm
            return self._pm

    def _load_entry_point(self, pm: pluggy.PluginManager, ep: EntryPoint) -> None:
        dist_name = ep.distribution
        version = ep.version
        where = f"entry point {ep.name!r} = {ep.value!r} of distribution {dist_name} {version}"
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(
                f"comm backend plugin failed to import: {where} "
                f"(group {self.group!r}): {type(exc).__name__}: {exc}"
            ) from exc
        name = ep.name if ep.name not in self._origins else f"{dist_name}:{ep.name}"
        self._register(pm, plugin, _PluginOrigin(name, dist_name, version), where)

    def _register(
        self, pm: pluggy.PluginManager, plugin: object, origin: _PluginOrigin, where: str
    ) -> None:
        if origin.name in self._origins or pm.get_plugin(origin.name) is not None:
            raise PluginError(f"a comm plugin named {origin.name!r} is already registered")
        try:
            pm.register(plugin, name=origin.name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginError(f"invalid comm plugin, {where}: {exc}") from exc
        self._origins[origin.name] = origin

    def _check(self, pm: pluggy.PluginManager) -> None:
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            origin = self._origins.get(pm.get_name(exc.plugin) or "")
            known = ", ".join(sorted(name for name in dir(hookspecs) if name.startswith("comm_")))
            source = (
                f"distribution {origin.distribution} {origin.version}"
                if origin is not None and origin.distribution
                else "code"
            )
            raise PluginError(
                f"comm plugin {origin.name if origin else exc.plugin!r} from {source} "
                f"implements a hook that does not exist ({exc}); known hooks: {known}"
            ) from exc

    def _collect(self) -> dict[str, BackendInfo]:
        with self._lock:
            if self._infos is not None:
                return self._infos
            pm = self._plugin_manager()
            claims: dict[str, list[BackendInfo]] = {}
            for impl in pm.hook.comm_register_backends.get_hookimpls():
                origin = self._origins.get(
                    impl.plugin_name, _PluginOrigin(impl.plugin_name, None, None)
                )
                try:
                    classes = impl.function()
                except Exception as exc:
                    raise PluginError(
                        f"comm plugin {origin.name!r} failed in comm_register_backends(): "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                if classes is None:
                    classes = ()
                if isinstance(classes, (str, type)) or not isinstance(classes, Iterable):
                    raise PluginError(
                        f"comm plugin {origin.name!r} returned {classes!r} from "
                        "comm_register_backends(); expected a sequence of comm_core.Backend "
                        "subclasses"
                    )
                for cls in classes:
                    info = self._make_info(cls, origin)
                    claims.setdefault(info.scheme, []).append(info)
            for scheme, info in self._code_backends.items():
                claims[scheme] = [info]  # registered in code with replace=True wins
            self._infos = {scheme: found[0] for scheme, found in claims.items() if len(found) == 1}
            self._conflicts = {scheme: found for scheme, found in claims.items() if len(found) > 1}
            return self._infos

    @staticmethod
    def _make_info(cls: Any, origin: _PluginOrigin) -> BackendInfo:
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise PluginError(
                f"comm plugin {origin.name!r} returned {cls!r} from comm_register_backends(); "
                "expected subclasses of comm_core.Backend"
            )
        scheme = getattr(cls, "scheme", None)
        if not isinstance(scheme, str) or not scheme or scheme != scheme.lower():
            raise PluginError(
                f"backend {cls.__qualname__} of comm plugin {origin.name!r} must set a "
                f"lower-case 'scheme' class attribute, got {scheme!r}"
            )
        return BackendInfo(scheme, cls, origin.name, origin.distribution, origin.version)

    # -- public ---------------------------------------------------------------------

    def register_plugin(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin object (a module or instance with ``@hookimpl`` functions).

        Raises:
            PluginError: the plugin is invalid or the name is taken.
        """
        with self._lock:
            pm = self._plugin_manager()
            plugin_name = name or getattr(plugin, "__name__", None) or repr(plugin)
            self._register(pm, plugin, _PluginOrigin(plugin_name, None, None), "registered in code")
            try:
                self._check(pm)
            except PluginError:  # leave no rejected plugin behind
                pm.unregister(name=plugin_name)
                del self._origins[plugin_name]
                raise
            self._infos = None
            self._families = None
            self._instances.clear()

    def register_backend(self, backend_class: type[Backend], *, replace: bool = False) -> None:
        """Register *backend_class* for its scheme, from code.

        Raises:
            BackendConflictError: the scheme is taken and *replace* is false.
            PluginError: *backend_class* is not a valid backend.
        """
        with self._lock:
            info = self._make_info(
                backend_class, _PluginOrigin(backend_class.__qualname__, None, None)
            )
            known = self._collect()
            taken = known.get(info.scheme)
            if taken is None and info.scheme in self._conflicts:
                taken = self._conflicts[info.scheme][0]
            if taken is not None and not replace:
                raise BackendConflictError(
                    f"scheme {info.scheme!r} is already served by {taken.describe()}; "
                    f"pass replace=True to register {backend_class.__qualname__} instead"
                )
            self._code_backends[info.scheme] = info
            self._infos = None
            self._instances.pop(info.scheme, None)

    def unregister_backend(self, scheme: str) -> None:
        """Forget the backend registered in code for *scheme* (plugins come back, if any)."""
        with self._lock:
            self._code_backends.pop(scheme, None)
            self._infos = None
            self._instances.pop(scheme, None)

    def serializer_families(self) -> Mapping[str, SerializerFamily]:
        """Every serializer family: comm-core's ``pickle`` plus those plugins register.

        Raises:
            BackendConflictError: two plugins register families with one name.
        """
        families = self._families
        if families is not None:
            return families
        from comm_core.protocol import pickle_family

        with self._lock:
            pm = self._plugin_manager()
            found: dict[str, SerializerFamily] = {pickle_family.name: pickle_family}
            for impl in pm.hook.comm_register_serializers.get_hookimpls():
                provided = cast("Sequence[SerializerFamily]", impl.function() or ())
                for family in provided:
                    if family.name in found:
                        raise BackendConflictError(
                            f"serializer family {family.name!r} of comm plugin "
                            f"{impl.plugin_name!r} is already registered"
                        )
                    found[family.name] = family
            self._families = MappingProxyType(found)
            return self._families

    def backends(self) -> Mapping[str, BackendInfo]:
        """A read-only view of the usable backends, by scheme (conflicted ones excluded)."""
        return MappingProxyType(self._collect())

    def conflicts(self) -> Mapping[str, tuple[BackendInfo, ...]]:
        """Schemes claimed by more than one plugin, with every claimant."""
        self._collect()
        return MappingProxyType({s: tuple(found) for s, found in self._conflicts.items()})

    def get_backend(self, scheme: str, *, address: str | None = None) -> Backend:
        """Return the backend instance for *scheme*, created on first use.

        Raises:
            UnknownSchemeError: no installed backend serves *scheme*.
            BackendConflictError: several distributions claim *scheme*.
            PluginError: a plugin failed to load or validate.
        """
        backend = self._instances.get(scheme)
        if backend is not None:
            return backend
        with self._lock:
            infos = self._collect()
            info = infos.get(scheme)
            if info is None:
                self._raise_missing(scheme, address, infos)
            backend = self._instances.get(scheme)
            if backend is None:
                backend = self._instances[scheme] = info.backend_class()
            return backend

    def _raise_missing(
        self, scheme: str, address: str | None, infos: Mapping[str, Any]
    ) -> NoReturn:
        if scheme in self._conflicts:
            claimants = " and ".join(info.describe() for info in self._conflicts[scheme])
            raise BackendConflictError(
                f"scheme {scheme!r} is claimed by more than one backend: {claimants}; "
                "uninstall one of them"
            )
        known = tuple(sorted(infos))
        subject = f"address {address!r}" if address else f"scheme {scheme!r}"
        installed = ", ".join(known) if known else "none"
        raise UnknownSchemeError(
            f"no comm backend for scheme {scheme!r} ({subject}); installed schemes: "
            f"{installed}. If a distribution provides it, install it: pip install comm-{scheme}",
            scheme=scheme,
            known=known,
        )


_default: Registry | None = None
_default_lock = threading.Lock()


def get_registry() -> Registry:
    """Return the process-wide :class:`Registry`, creating it (empty) on first call."""
    global _default
    registry = _default
    if registry is None:
        with _default_lock:
            if _default is None:
                _default = Registry()
            registry = _default
    return registry


def get_backend(scheme: str) -> Backend:
    """Return the backend for *scheme* from the process-wide registry.

    Raises:
        UnknownSchemeError: no installed backend serves *scheme*; the message
            lists the installed schemes and the distribution to install.
        BackendConflictError: two distributions claim *scheme*.
        PluginError: an installed plugin is broken.
    """
    return get_registry().get_backend(scheme)


def backends() -> Mapping[str, BackendInfo]:
    """A read-only view of the installed backends, by scheme."""
    return get_registry().backends()


def register_backend(backend_class: type[Backend], *, replace: bool = False) -> None:
    """Register *backend_class* process-wide; see :meth:`Registry.register_backend`."""
    get_registry().register_backend(backend_class, replace=replace)


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Register a plugin in the process-wide registry; see :meth:`Registry.register_plugin`."""
    get_registry().register_plugin(plugin, name)
