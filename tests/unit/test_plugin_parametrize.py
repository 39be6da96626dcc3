"""The plugin package and its vm_type parametrization, run with pytester (no /dev/kvm needed):
every hook and fixture its modules define is registered, ``-p kvmffi.pytest_plugin`` loads it
without the entry point, and only kvmffi's own ``vm_type``/``gmem_flags`` are parametrized."""

import importlib
import pkgutil

import pytest

import kvmffi.pytest_plugin as plugin

# kvmffi's vm_type, parametrized over this host's VM types (one at least: DEFAULT is the fallback)
OURS = """
def test_ours(vm_type):
    assert vm_type.name
"""


def _ids(r: pytest.RunResult, test: str) -> list[str]:
    """The collected node ids of ``test`` (a ``file.py::name`` prefix)."""
    return [ln for ln in r.stdout.lines if ln == test or ln.startswith(test + "[")]


def test_the_package_registers_every_hook_and_fixture_of_its_modules() -> None:
    """pytest registers the package only: a hook or fixture left out of its imports would be lost."""
    for info in pkgutil.iter_modules(plugin.__path__):
        module = importlib.import_module(f"{plugin.__name__}.{info.name}")
        for name, obj in vars(module).items():
            # a fixture: FixtureFunctionDefinition since pytest 8.4, a marked function before
            fixture = type(obj).__name__ == "FixtureFunctionDefinition" or hasattr(obj, "_pytestfixturefunction")
            if name.startswith("pytest_") or fixture:
                assert getattr(plugin, name, None) is obj, f"{module.__name__}.{name} is not in {plugin.__name__}"


def test_the_plugin_loads_by_name_without_the_entry_point(pytester: pytest.Pytester,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The test kernel's runs disable autoloading and name the plugin (kvmffi.runner.pytest_args)."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(test_ours=OURS)
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "kvmffi.pytest_plugin", "--collect-only", "-q")
    assert _ids(r, "test_ours.py::test_ours") and "test_ours.py::test_ours" not in r.stdout.lines
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider")  # not named: not loaded
    r.assert_outcomes(errors=1)
    r.stdout.fnmatch_lines(["*fixture 'vm_type' not found*"])


@pytest.mark.parametrize("where", ["module", "conftest"])
def test_a_users_own_vm_type_is_left_alone(pytester: pytest.Pytester, where: str) -> None:
    """A project's own fixture named vm_type (in its test module, or in the root conftest, whose
    fixtures share the plugin's empty baseid) is not parametrized over VM types; kvmffi's, in a
    module next to it, still is."""
    own = """
import pytest

@pytest.fixture
def vm_type():
    return "the project's own vm_type"
"""
    theirs = """
def test_theirs(vm_type):
    assert vm_type == "the project's own vm_type"
"""
    if where == "conftest":
        pytester.makeconftest(own)
        pytester.makepyfile(test_theirs=theirs)
    else:
        pytester.makepyfile(test_theirs=own + theirs, test_ours=OURS)
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--collect-only", "-q")
    assert _ids(r, "test_theirs.py::test_theirs") == ["test_theirs.py::test_theirs"]
    if where == "module":
        assert _ids(r, "test_ours.py::test_ours") and "test_ours.py::test_ours" not in r.stdout.lines
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--kvm-no-leak-check", "test_theirs.py")
    r.assert_outcomes(passed=1)


def test_a_users_own_gmem_flags_is_left_alone(pytester: pytest.Pytester) -> None:
    """With kvmffi's vm_type and the project's own gmem_flags, vm_type alone is parametrized (ids
    name a VM type, not a type and flags) and the test gets the project's gmem_flags."""
    pytester.makepyfile(test_flags="""
import pytest

@pytest.fixture
def gmem_flags():
    return "the project's own flags"

def test_flags(vm_type, gmem_flags):
    assert gmem_flags == "the project's own flags"
""")
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--collect-only", "-q")
    ids = _ids(r, "test_flags.py::test_flags")
    assert ids and not [i for i in ids if "-" in i.partition("[")[2]], ids
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--kvm-no-leak-check")
    outcomes = r.parseoutcomes()
    assert outcomes.get("passed", 0) >= 1 and not outcomes.get("failed") and not outcomes.get("errors"), outcomes
