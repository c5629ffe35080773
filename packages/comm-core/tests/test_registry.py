from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import comm_core
from comm_core import (
    BackendConflictError,
    PluginError,
    Registry,
    UnknownSchemeError,
    _registry,
)
from conftest import FakeDistributions
from memory_backend import InProcessMemoryBackend, MemoryBackend


def plugin_source(*schemes: str, hook: str = "comm_register_backends", extra: str = "") -> str:
    """A plugin module that provides one stub backend per scheme through *hook*."""
    classes = "".join(
        textwrap.dedent(
            f"""
            class Backend_{i}(comm_core.Backend):
                scheme = {scheme!r}

                def get_connector(self):
                    raise NotImplementedError

                def get_listener(self, loc, handle_comm, deserialize, **connection_args):
                    raise NotImplementedError

                def get_address_host(self, loc):
                    return loc

                def resolve_address(self, loc):
                    return loc

                def get_local_address_for(self, loc):
                    return loc
            """
        )
        for i, scheme in enumerate(schemes)
    )
    names = ", ".join(f"Backend_{i}" for i in range(len(schemes)))
    return (
        f"import comm_core\n{extra}\n{classes}\n\n"
        f"@comm_core.hookimpl\ndef {hook}():\n    return [{names}]\n"
    )


def test_backend_found_through_its_entry_point(fake_dists: FakeDistributions) -> None:
    fake_dists.add(
        "comm-fakefoo",
        {"foo": "fakefoo_plugin"},
        {"fakefoo_plugin": plugin_source("foo")},
        version="1.2.3",
    )
    registry = Registry()
    assert "fakefoo_plugin" not in sys.modules  # nothing is loaded before first use
    info = registry.backends()["foo"]
    assert info.scheme == "foo"
    assert info.distribution == "comm-fakefoo"
    assert info.version == "1.2.3"
    assert info.plugin == "foo"
    assert info.backend_class.__module__ == "fakefoo_plugin"
    assert info.describe() == "comm-fakefoo 1.2.3 (plugin 'foo')"
    backend = registry.get_backend("foo")
    assert isinstance(backend, info.backend_class)
    assert registry.get_backend("foo") is backend  # one instance per scheme


def test_process_wide_functions_use_entry_points(
    fake_dists: FakeDistributions, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dists.add(
        "comm-fakewide", {"wide": "fakewide_plugin"}, {"fakewide_plugin": plugin_source("wide")}
    )
    monkeypatch.setattr(_registry, "_default", None)
    assert comm_core.backends()["wide"].distribution == "comm-fakewide"
    registry = comm_core.get_registry()
    assert comm_core.get_registry() is registry
    assert comm_core.get_backend("wide") is registry.get_backend("wide")


def test_one_distribution_with_several_schemes(fake_dists: FakeDistributions) -> None:
    fake_dists.add(
        "comm-fakemulti",
        {"multi": "fakemulti_plugin"},
        {"fakemulti_plugin": plugin_source("m1", "m2")},
    )
    found = Registry().backends()
    assert found["m1"].distribution == found["m2"].distribution == "comm-fakemulti"


def test_two_distributions_claiming_one_scheme(fake_dists: FakeDistributions) -> None:
    fake_dists.add(
        "comm-fakea", {"foo": "fakea_plugin"}, {"fakea_plugin": plugin_source("foo", "onlya")}
    )
    fake_dists.add("comm-fakeb", {"foo": "fakeb_plugin"}, {"fakeb_plugin": plugin_source("foo")})
    registry = Registry()
    with pytest.raises(BackendConflictError) as info:
        registry.get_backend("foo")
    message = str(info.value)
    assert "'foo'" in message
    assert "comm-fakea 1.0" in message
    assert "comm-fakeb 1.0" in message
    # The other schemes still work; the conflicted one is not offered.
    assert registry.backends()["onlya"].distribution == "comm-fakea"
    assert registry.get_backend("onlya") is not None
    assert "foo" not in registry.backends()
    claimants = {claim.distribution for claim in registry.conflicts()["foo"]}
    assert claimants == {"comm-fakea", "comm-fakeb"}


def test_code_registration_resolves_a_conflict(fake_dists: FakeDistributions) -> None:
    fake_dists.add("comm-fakec", {"foo": "fakec_plugin"}, {"fakec_plugin": plugin_source("foo")})
    fake_dists.add("comm-faked", {"foo": "faked_plugin"}, {"faked_plugin": plugin_source("foo")})
    registry = Registry()
    with pytest.raises(
        BackendConflictError, match=r"'foo' is already served by comm-fake[cd] 1\.0"
    ):
        registry.register_backend(type("FooBackend", (MemoryBackend,), {"scheme": "foo"}))
    chosen = type("FooBackend", (MemoryBackend,), {"scheme": "foo"})
    registry.register_backend(chosen, replace=True)
    assert isinstance(registry.get_backend("foo"), chosen)


def test_misspelled_hook(fake_dists: FakeDistributions) -> None:
    fake_dists.add(
        "comm-fakespell",
        {"spell": "fakespell_plugin"},
        {"fakespell_plugin": plugin_source("spell", hook="comm_register_backend")},
    )
    registry = Registry()
    for _ in range(2):  # the same error again, not a confusing one about the first attempt
        with pytest.raises(PluginError) as info:
            registry.get_backend("spell")
        message = str(info.value)
        assert "'spell'" in message  # the plugin
        assert "comm-fakespell 1.0" in message  # its distribution
        assert "comm_register_backend" in message  # the unknown hook
        assert "known hooks: comm_register_backends" in message


def test_plugin_that_fails_to_import(fake_dists: FakeDistributions) -> None:
    fake_dists.add(
        "comm-fakebroken",
        {"broken": "fakebroken_plugin"},
        {"fakebroken_plugin": "import comm_core\nraise RuntimeError('boom at import')\n"},
    )
    registry = Registry()
    for _ in range(2):
        with pytest.raises(PluginError) as info:
            registry.backends()
        message = str(info.value)
        assert "comm-fakebroken 1.0" in message
        assert "'fakebroken_plugin'" in message
        assert "RuntimeError: boom at import" in message
        assert isinstance(info.value.__cause__, RuntimeError)


def test_entry_point_naming_a_missing_module(fake_dists: FakeDistributions) -> None:
    fake_dists.add("comm-fakemissing", {"missing": "fakemissing_nowhere"}, {})
    with pytest.raises(PluginError, match=r"comm-fakemissing.*ModuleNotFoundError"):
        Registry().get_backend("missing")


@pytest.mark.parametrize(
    "returned",
    ["42", "[int]", "[object()]", "[comm_core.Backend]"],
    ids=["int", "not-backend", "instance", "base"],
)
def test_hook_returning_a_non_backend(fake_dists: FakeDistributions, returned: str) -> None:
    fake_dists.add(
        "comm-fakebad",
        {"bad": "fakebad_plugin"},
        {
            "fakebad_plugin": (
                "import comm_core\n\n"
                f"@comm_core.hookimpl\ndef comm_register_backends():\n    return {returned}\n"
            )
        },
    )
    with pytest.raises(PluginError) as info:
        Registry().backends()
    message = str(info.value)
    assert "'bad'" in message
    assert "comm_register_backends" in message or "scheme" in message


# -- entry points that name no plugin ---------------------------------------------------------

#: A module with Dask's shape: an entry point names the backend class (or a factory),
#: which Dask instantiates; comm expects a plugin module with hook implementations.
DASK_SHAPED = """
import comm_core

class DaskyBackend(comm_core.Backend):
    scheme = "dasky"

    def get_connector(self):
        raise NotImplementedError

    def get_listener(self, loc, handle_comm, deserialize, **connection_args):
        raise NotImplementedError

    def get_address_host(self, loc):
        return loc

    def resolve_address(self, loc):
        return loc

    def get_local_address_for(self, loc):
        return loc

def backend_factory():
    return DaskyBackend()
"""


def _assert_names_the_shape(message: str, distribution: str, entry_point: str) -> None:
    assert distribution in message  # who published it, with its version
    assert entry_point in message  # the entry point: name and value
    assert "provides no comm hook" in message
    assert "@comm_core.hookimpl" in message  # the expected shape, with an example
    assert "def comm_register_backends(): return [MyBackend]" in message
    assert "comm_register_serializers" in message  # the hooks there are
    assert "'Plugins and entry points'" in message  # and where the docs say more


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("fakehookless_mod", "module fakehookless_mod"),
        ("fakehookless_mod:DaskyBackend", "the backend class fakehookless_mod.DaskyBackend"),
        ("fakehookless_mod:backend_factory", "the callable fakehookless_mod.backend_factory"),
    ],
    ids=["module", "backend-class", "factory"],
)
def test_entry_point_that_provides_no_hook(
    fake_dists: FakeDistributions, value: str, named: str
) -> None:
    fake_dists.add(
        "comm-fakehookless", {"dasky": value}, {"fakehookless_mod": DASK_SHAPED}, version="0.3"
    )
    fake_dists.add(
        "comm-fakefine", {"fine": "fakefine_plugin"}, {"fakefine_plugin": plugin_source("fine")}
    )
    registry = Registry()
    # At the first lookup, and every one after it, whatever the scheme: never an
    # UnknownSchemeError for "dasky", and no silently missing backend.
    for lookup in ("dasky", "fine", "dasky"):
        with pytest.raises(PluginError) as info:
            registry.get_backend(lookup)
        message = str(info.value)
        _assert_names_the_shape(message, "comm-fakehookless 0.3", f"'dasky' = {value!r}")
        assert named in message
    with pytest.raises(PluginError):
        registry.backends()
    # The others are still listed for those who ask for a partial view.
    [broken] = registry.broken()
    assert broken == comm_core.BrokenPlugin(
        "dasky", value, "comm-fakehookless", "0.3", broken.message
    )
    _assert_names_the_shape(broken.message, "comm-fakehookless 0.3", f"'dasky' = {value!r}")
    assert set(registry.backends(strict=False)) >= {"fine"}
    assert "dasky" not in registry.backends(strict=False)
    assert dict(registry.conflicts(strict=False)) == {}


def test_plugin_that_fails_to_import_is_listed_as_broken(fake_dists: FakeDistributions) -> None:
    fake_dists.add(
        "comm-fakeboom",
        {"boom": "fakeboom_plugin"},
        {"fakeboom_plugin": "raise RuntimeError('boom at import')\n"},
    )
    fake_dists.add("comm-fakeok", {"ok": "fakeok_plugin"}, {"fakeok_plugin": plugin_source("ok")})
    registry = Registry()
    with pytest.raises(PluginError, match=r"comm-fakeboom 1\.0.*RuntimeError: boom at import"):
        registry.get_backend("ok")
    [broken] = registry.broken()
    assert (broken.plugin, broken.entry_point, broken.distribution) == (
        "boom",
        "fakeboom_plugin",
        "comm-fakeboom",
    )
    assert "RuntimeError: boom at import" in broken.message
    assert "ok" in registry.backends(strict=False)


def test_several_broken_plugins(fake_dists: FakeDistributions) -> None:
    fake_dists.add("comm-fakenone", {"none": "fakenone_mod"}, {"fakenone_mod": "X = 1\n"})
    fake_dists.add("comm-fakegone", {"gone": "fakegone_nowhere"}, {})
    registry = Registry()
    with pytest.raises(PluginError, match=r"and 1 more broken: `comm backends` lists them"):
        registry.get_backend("none")
    assert sorted(b.distribution or "" for b in registry.broken()) == [
        "comm-fakegone",
        "comm-fakenone",
    ]


def test_plugin_with_cli_hooks_only_is_a_plugin(fake_dists: FakeDistributions) -> None:
    # A plugin may extend the command line only (for another distribution's transport).
    source = (
        "import comm_core\n\n"
        "@comm_core.hookimpl\ndef comm_cli_doctor_steps(scheme):\n    return None\n"
    )
    fake_dists.add(
        "comm-fakeclionly", {"clionly": "fakeclionly_plugin"}, {"fakeclionly_plugin": source}
    )
    registry = Registry()
    assert registry.broken() == ()
    found = registry.implementations("comm_cli_doctor_steps")
    [impl] = [impl for impl in found if impl.plugin == "clionly"]
    assert (impl.plugin, impl.distribution, impl.argnames) == (
        "clionly",
        "comm-fakeclionly",
        ("scheme",),
    )
    assert impl.describe() == "comm-fakeclionly 1.0 (plugin 'clionly')"
    assert impl.call(scheme="x", backend=None, options=None) is None


def test_register_plugin_without_hooks_in_code(registry: Registry) -> None:
    with pytest.raises(PluginError) as info:
        comm_core.register_plugin(MemoryBackend, name="not-a-plugin")
    message = str(info.value)
    assert message.startswith("plugin 'not-a-plugin' (registered in code) provides no comm hook")
    assert "the backend class memory_backend.MemoryBackend" in message
    # Nothing is left behind: the name is free, and lookups work.
    comm_core.register_plugin(_Plugin(), name="not-a-plugin")
    assert registry.broken() == ()
    assert "memory-local" in comm_core.backends()


def test_implementations_in_calling_order(registry: Registry) -> None:
    class First:
        @comm_core.hookimpl
        def comm_cli_doctor_steps(self, scheme: str, backend: object) -> None:
            return None

    class Second:
        @comm_core.hookimpl(tryfirst=True)
        def comm_cli_doctor_steps(self, options: object) -> None:
            return None

    comm_core.register_plugin(First(), name="first")
    comm_core.register_plugin(Second(), name="second")
    found = registry.implementations("comm_cli_doctor_steps")
    assert [(impl.plugin, impl.argnames) for impl in found] == [
        ("second", ("options",)),
        ("first", ("scheme", "backend")),
    ]
    assert found[1].describe() == "plugin 'first' (registered in code)"
    with pytest.raises(ValueError, match="no comm hook is named 'comm_nope'"):
        registry.implementations("comm_nope")


def test_backend_with_a_bad_scheme_attribute(registry: Registry) -> None:
    for scheme in ("", "UPPER", None):
        cls = type("OddBackend", (MemoryBackend,), {"scheme": scheme})
        with pytest.raises(PluginError, match="lower-case 'scheme'"):
            registry.register_backend(cls)


def test_hook_that_raises(fake_dists: FakeDistributions) -> None:
    source = (
        "import comm_core\n\n"
        "@comm_core.hookimpl\ndef comm_register_backends():\n    raise ImportError('no lib')\n"
    )
    fake_dists.add("comm-fakeraise", {"raise": "fakeraise_plugin"}, {"fakeraise_plugin": source})
    with pytest.raises(PluginError, match=r"'raise' failed in comm_register_backends\(\).*no lib"):
        Registry().backends()


def test_disable_autoload_from_environment(
    fake_dists: FakeDistributions, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dists.add(
        "comm-fakeoff", {"off": "fakeoff_plugin"}, {"fakeoff_plugin": plugin_source("off")}
    )
    monkeypatch.setenv("COMM_DISABLE_PLUGIN_AUTOLOAD", "1")
    registry = Registry()
    with pytest.raises(UnknownSchemeError):
        registry.get_backend("off")
    assert "fakeoff_plugin" not in sys.modules
    # The same distributions, with autoload on: the backend is found (so the test can fail).
    assert "off" in Registry(autoload=True).backends()


def test_disable_autoload_argument(fake_dists: FakeDistributions) -> None:
    fake_dists.add(
        "comm-fakeoff2", {"off2": "fakeoff2_plugin"}, {"fakeoff2_plugin": plugin_source("off2")}
    )
    assert "off2" not in Registry(autoload=False).backends()
    assert "fakeoff2_plugin" not in sys.modules
    assert "off2" in Registry().backends()


def test_other_group(fake_dists: FakeDistributions) -> None:
    fake_dists.add(
        "comm-fakegroup",
        {"grp": "fakegroup_plugin"},
        {"fakegroup_plugin": plugin_source("grp")},
        group="my_app.backends",
    )
    assert "grp" not in Registry().backends()
    assert Registry(group="my_app.backends").backends()["grp"].distribution == "comm-fakegroup"


def test_register_backend_in_code(registry: Registry) -> None:
    comm_core.register_backend(MemoryBackend)
    info = comm_core.backends()["memory"]
    assert info.distribution is None
    assert info.describe() == "plugin 'MemoryBackend' (registered in code)"
    first = comm_core.get_backend("memory")
    assert isinstance(first, MemoryBackend)

    other = type("OtherMemoryBackend", (MemoryBackend,), {"scheme": "memory"})
    with pytest.raises(BackendConflictError) as info_:
        comm_core.register_backend(other)
    assert "'memory'" in str(info_.value)
    assert "MemoryBackend" in str(info_.value)
    assert "replace=True" in str(info_.value)
    assert comm_core.get_backend("memory") is first  # unchanged

    comm_core.register_backend(other, replace=True)
    assert isinstance(comm_core.get_backend("memory"), other)

    registry.unregister_backend("memory")
    with pytest.raises(UnknownSchemeError):
        comm_core.get_backend("memory")


def test_unregister_brings_the_plugin_back(fake_dists: FakeDistributions) -> None:
    fake_dists.add(
        "comm-fakeback", {"back": "fakeback_plugin"}, {"fakeback_plugin": plugin_source("back")}
    )
    registry = Registry()
    replacement = type("BackBackend", (MemoryBackend,), {"scheme": "back"})
    registry.register_backend(replacement, replace=True)
    assert registry.backends()["back"].distribution is None
    assert isinstance(registry.get_backend("back"), replacement)
    registry.unregister_backend("back")
    assert registry.backends()["back"].distribution == "comm-fakeback"
    assert not isinstance(registry.get_backend("back"), replacement)


def test_register_backend_rejects_non_backends(registry: Registry) -> None:
    with pytest.raises(PluginError, match=r"expected subclasses of comm_core\.Backend"):
        comm_core.register_backend(int)  # type: ignore[arg-type]


class _Plugin:
    @comm_core.hookimpl
    def comm_register_backends(self) -> list[type[comm_core.Backend]]:
        return [InProcessMemoryBackend]


class _MisspelledPlugin:
    @comm_core.hookimpl
    def comm_register_backend(self) -> list[type[comm_core.Backend]]:
        return [MemoryBackend]


def test_register_plugin_in_code(registry: Registry) -> None:
    comm_core.register_plugin(_Plugin(), name="my-plugin")
    info = comm_core.backends()["memory-local"]
    assert (info.plugin, info.distribution) == ("my-plugin", None)
    assert isinstance(comm_core.get_backend("memory-local"), InProcessMemoryBackend)
    with pytest.raises(PluginError, match="'my-plugin' is already registered"):
        comm_core.register_plugin(_Plugin(), name="my-plugin")


def test_register_misspelled_plugin_in_code(registry: Registry) -> None:
    with pytest.raises(PluginError) as info:
        comm_core.register_plugin(_MisspelledPlugin(), name="typo")
    assert "'typo'" in str(info.value)
    assert "comm_register_backend" in str(info.value)
    # The rejected plugin is not left behind: the registry still works.
    assert "memory" not in comm_core.backends()
    comm_core.register_plugin(_Plugin(), name="typo")
    assert "memory-local" in comm_core.backends()


def test_unknown_scheme(registry: Registry) -> None:
    comm_core.register_backend(MemoryBackend)
    comm_core.register_backend(InProcessMemoryBackend)
    with pytest.raises(UnknownSchemeError) as info:
        comm_core.get_backend("nope")
    message = str(info.value)
    assert message == (
        "no comm backend for scheme 'nope'; installed schemes: memory, "
        "memory-local; if a third-party distribution provides nope://, install it (comm "
        "cannot tell which one does)"
    )
    assert "pip install" not in message  # never comm-<whatever was typed>: typosquatting
    assert info.value.scheme == "nope"
    assert info.value.known == ("memory", "memory-local")


async def test_unknown_scheme_of_an_address(registry: Registry) -> None:
    with pytest.raises(UnknownSchemeError) as info:
        await comm_core.connect("nope://somewhere:1")
    message = str(info.value)
    assert "'nope://somewhere:1'" in message
    assert "installed schemes: none" in message
    assert "pip install" not in message
    with pytest.raises(UnknownSchemeError) as info:
        comm_core.listen("127.0.0.1:0", print)  # the default scheme, tcp, is not installed
    assert str(info.value).endswith(
        "installed schemes: none; comm-tcp provides tcp://: pip install comm-tcp"
    )


@pytest.mark.parametrize(
    ("scheme", "advice"),
    [
        ("tls", "comm-tls provides tls://: pip install comm-tls"),
        ("inproc", "comm-inproc provides inproc://: pip install comm-inproc"),
        ("ws", "comm-ws provides ws://: pip install comm-ws"),
        ("wss", "comm-ws provides wss://: pip install comm-ws"),
        # A typo of an installed scheme, or of one of comm's own.
        ("memroy", "did you mean memory://?"),
        ("tpc", "did you mean tcp://? (comm-tcp provides it: pip install comm-tcp)"),
        ("tsl", "did you mean tls://? (comm-tls provides it: pip install comm-tls)"),
        # Anything else: no distribution named.
        ("quic", "if a third-party distribution provides quic://, install it (comm "
         "cannot tell which one does)"),
        ("comm-evil", "if a third-party distribution provides comm-evil://, install it (comm "
         "cannot tell which one does)"),
    ],
)  # fmt: skip
def test_unknown_scheme_advice(registry: Registry, scheme: str, advice: str) -> None:
    comm_core.register_backend(MemoryBackend)
    with pytest.raises(UnknownSchemeError) as info:
        comm_core.get_backend(scheme)
    assert str(info.value) == (
        f"no comm backend for scheme {scheme!r}; installed schemes: memory; {advice}"
    )


# -- laziness --------------------------------------------------------------------------

_PROBE = """
import json, sys
import comm_core
import comm_core._registry as registry
before = {
    "transports": sorted(m for m in ("comm_inproc", "comm_tcp", "comm_tls") if m in sys.modules),
    "plugin": "fakelazy_plugin" in sys.modules,
    "testing": sorted(m for m in sys.modules if m.startswith("comm_core.testing")),
    "default_registry": registry._default is not None,
}
schemes = sorted(comm_core.backends())
after = {"plugin": "fakelazy_plugin" in sys.modules, "schemes": schemes}
print(json.dumps({"before": before, "after": after}))
"""


def test_import_is_lazy(fake_dists: FakeDistributions) -> None:
    fake_dists.add(
        "comm-fakelazy", {"lazy": "fakelazy_plugin"}, {"fakelazy_plugin": plugin_source("lazy")}
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(fake_dists.root), *filter(None, [env.get("PYTHONPATH")])]
    )
    env.pop("COMM_DISABLE_PLUGIN_AUTOLOAD", None)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    result = json.loads(out)
    assert result["before"] == {
        "transports": [],
        "plugin": False,
        "testing": [],
        "default_registry": False,
    }
    # The probe can see a plugin: the first use of the registry loads it.
    assert result["after"]["plugin"] is True
    assert "lazy" in result["after"]["schemes"]


_LIGHT_PROBE = f"""
import json, sys
import comm_core
{plugin_source("light")}
comm_core.register_backend(Backend_0)
comm_core.get_backend("light")
comm_core.backends()
comm_core.get_address_host("light://somewhere")
comm_core.get_local_address_for("light://somewhere")
comm_core.resolve_address("light://somewhere")
heavy = ("asyncio", "ssl", "msgpack", "logging", "socket", "comm_core.protocol",
         "comm_core.stream", "comm_core.session", "comm_core.transport")
print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
"""


def test_looking_up_a_backend_imports_no_asyncio() -> None:
    # comm-core's own part: connect() and listen() import asyncio and the wire protocol,
    # importing comm_core and looking up a (light) backend do not. The transports' part
    # is checked in the repository's tests/test_discovery.py.
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", _LIGHT_PROBE],
        env={**os.environ, "COMM_DISABLE_PLUGIN_AUTOLOAD": "1"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert json.loads(out) == []


_SUBMODULES_PROBE = """
import json, sys
import comm_core
before = sorted(m for m in ("comm_core.protocol", "comm_core.stream") if m in sys.modules)
protocol, stream = comm_core.protocol, comm_core.stream
print(json.dumps({
    "before": before,
    "same": [protocol is sys.modules["comm_core.protocol"],
             stream is sys.modules["comm_core.stream"]],
    "names": [protocol.__name__, stream.StreamComm.__qualname__],
}))
"""


def test_protocol_and_stream_are_attributes_imported_on_first_access() -> None:
    # They were imported with comm_core once; code that reached them as attributes still can.
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", _SUBMODULES_PROBE],
        env={**os.environ, "COMM_DISABLE_PLUGIN_AUTOLOAD": "1"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert json.loads(out) == {
        "before": [],
        "same": [True, True],
        "names": ["comm_core.protocol", "StreamComm"],
    }


def test_unknown_attribute_of_comm_core() -> None:
    with pytest.raises(AttributeError, match=r"^module 'comm_core' has no attribute 'nope'$"):
        comm_core.nope  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(ImportError, match="cannot import name 'nope'"):
        from comm_core import nope  # type: ignore[attr-defined]  # noqa: F401
    assert set(comm_core.__all__) <= set(dir(comm_core))


def test_fake_distributions_are_gone_after_their_test(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Runs after the tests above: their modules, path entries and metadata are gone.
    base = tmp_path_factory.getbasetemp()
    assert not [p for p in sys.path if Path(p).is_relative_to(base)]
    assert not [m for m in sys.modules if m.startswith("fake")]
    assert not {"foo", "wide", "lazy"} & set(Registry().backends())


class _MisspelledSameHostPlugin:
    @comm_core.hookimpl
    def comm_same_host_offers(self, session: object) -> None:  # the hook is ..._offer
        return None


def test_a_misspelled_same_host_hook_is_refused(registry: Registry) -> None:
    with pytest.raises(PluginError) as info:
        comm_core.register_plugin(_MisspelledSameHostPlugin(), name="typo-same-host")
    message = str(info.value)
    assert "comm_same_host_offers" in message
    # The error lists the real hooks, the same-host ones included.
    assert "comm_same_host_offer, comm_same_host_path" in message
