"""Run the suites in several configurations (kernel x topology x KVM module parameters) and compare.

A configuration names a kernel (this host, or a test kernel by version), the guest machine's NUMA
nodes and kernel command line additions (KVM module parameters of the built-in KVM). The result of
each is its totals and every test's outcome; the report puts the configurations side by side and
lists the tests whose outcome differs between them.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from . import ktap
from .ktap import KSFT_FAIL, KSFT_SKIP
from .runner import TierResult, run_tier
from .testkernel.spec import BootSpec, SpecError, is_kernel


@dataclass(frozen=True)
class Config:
    """One configuration of the matrix: a name, the machine it runs on, and its tiers."""
    name: str
    spec: BootSpec = BootSpec()
    tiers: tuple[str, ...] = ("host", "private")
    note: str = ""                   # why a tier is left out, shown in the report


SHADOW_MMU = "kvm_amd.npt=0 kvm_intel.ept=0"
TDP_MMU_OFF = "kvm.tdp_mmu=0"       # NPT/EPT on, managed by the legacy MMU
DEFAULT_CONFIGS = (
    Config("host"),
    Config("6.12", BootSpec("6.12")),
    Config("7.3", BootSpec("7.3")),
    Config("7.3-numa2", BootSpec("7.3", numa=2)),
    Config("7.3-tdp-mmu-off", BootSpec("7.3", kernel_args=TDP_MMU_OFF), tiers=("host",),
           note="private tier not run: on the legacy MMU (kvm.tdp_mmu=0) KVM offers no KVM_X86_SW_PROTECTED_VM, "
                "which needs the TDP MMU"),
    Config("7.3-shadow-mmu", BootSpec("7.3", kernel_args=SHADOW_MMU), tiers=("host",),
           note="private tier not run: with the shadow MMU (kvm_amd.npt=0) KVM offers no KVM_X86_SW_PROTECTED_VM, "
                "which needs the TDP MMU"),
)
TIERS = ("host", "private", "selftests")     # selftests: the kernel's own, built from the kernel's source


def parse_config(text: str) -> Config:
    """A named default, or KERNEL[+numaN][+cpusN][+PARAM=VALUE...]: '7.3+numa2', '7.3+kvm.tdp_mmu=0',
    'host'. Raises ValueError (SpecError) naming what it cannot take."""
    for c in DEFAULT_CONFIGS:
        if c.name == text:
            return c
    parts = text.split("+")
    kernel = parts[0]
    if not is_kernel(kernel):
        raise SpecError(f"configuration {text!r}: {kernel!r} is neither a known configuration ("
                        + ", ".join(c.name for c in DEFAULT_CONFIGS) + "), nor host, a version (7.3, 7.3-debug, "
                        "newest) or a bzImage path; build your own as KERNEL[+numaN][+cpusN][+PARAM=VALUE...]")
    knobs: dict[str, int] = {}
    args = []
    for p in parts[1:]:
        m = re.fullmatch(r"(numa|cpus)(\d+)", p)
        if m:
            knobs[m.group(1)] = int(m.group(2))
        elif "=" in p:
            args.append(p)
        else:
            raise SpecError(f"configuration {text!r}: {p!r} is neither numaN, cpusN nor a PARAM=VALUE")
    try:
        spec = BootSpec(kernel, cpus=knobs.get("cpus", 2), numa=knobs.get("numa", 0), kernel_args=" ".join(args))
        spec.require_test_kernel()
        return Config(text, spec)
    except SpecError as e:
        raise SpecError(f"configuration {text!r}: {e}") from None


@dataclass
class ConfigResult:
    config: Config
    kernel_release: str = ""
    tiers: list[TierResult] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, int]:
        out = {k: 0 for k in ("pass", "fail", "skip", "xfail", "xpass", "error")}
        for t in self.tiers:
            for k in out:
                out[k] += t.totals.get(k, 0)
            if t.infra_error or not t.totals:
                out["error"] += 1
        return out

    @property
    def outcomes(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for t in self.tiers:
            out.update(t.outcomes)
        return out

    @property
    def ksft(self) -> int:
        return ktap.combine(t.ksft for t in self.tiers)

    def to_json(self) -> dict[str, object]:
        c = self.config
        return {"name": c.name, "kernel": self.kernel_release or c.spec.kernel, "kernel_args": c.spec.kernel_args,
                "numa_nodes": max(c.spec.numa, 1), "cpus": c.spec.cpus, "totals": self.totals,
                "outcomes": self.outcomes, "note": c.note,
                "errors": [t.infra_error for t in self.tiers if t.infra_error]}


def shard(configs: list[Config], spec: str | None) -> list[Config]:
    """The I-th of N slices (1-based): 'I/N'."""
    if not spec:
        return configs
    m = re.fullmatch(r"(\d+)/(\d+)", spec)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ValueError(f"--shard {spec!r}: give I/N with 1 <= I <= N, e.g. 2/3")
    i, n = int(m.group(1)), int(m.group(2))
    return [c for k, c in enumerate(configs) if k % n == i - 1]


def _fit_to_host(c: Config) -> Config:
    """This host runs the private tier only if it has a VM type with private memory."""
    from .caps import snapshot
    blocker = snapshot().private_tier_blocker()
    if "private" not in c.tiers or not blocker:
        return c
    return replace(c, tiers=tuple(x for x in c.tiers if x != "private"),
                   note=f"private tier not run here: {blocker}; it runs in the test kernels")


def with_tiers(configs: list[Config], tiers: list[str]) -> list[Config]:
    """The configurations with these tiers (host, private, selftests): a tier a configuration leaves out
    by design (its note says why) stays out; this host runs no selftests (they need a test kernel)."""
    bad = [t for t in tiers if t not in TIERS]
    if bad or not tiers:
        raise ValueError(f"--tiers {','.join(tiers)}: choose from {', '.join(TIERS)}")
    out = []
    for c in configs:
        keep = tuple(t for t in tiers if (t != "private" or "private" in c.tiers) and
                     (t != "selftests" or not c.spec.on_host))
        out.append(replace(c, tiers=keep))
    return [c for c in out if c.tiers]


def run_matrix(configs: list[Config], *, selection: list[str] | None = None, keyword: str | None = None,
               strict: bool = False, jobs: int = 1, quiet: bool = False,
               progress: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
               log_dir: str | None = None) -> list[ConfigResult]:
    """Run every configuration (kernels are resolved, i.e. built, first and one at a time). Raises
    KernelBuildError or SourceError when a kernel cannot be built."""
    images: dict[str, BootSpec] = {}
    for c in configs:
        if c.spec.kernel not in images:
            progress(f"kvmffi matrix: kernel {c.spec.kernel}" + ("" if c.spec.on_host else " (built once, then cached)"))
            images[c.spec.kernel] = c.spec.resolved(quiet)
    configs = [_fit_to_host(c) if c.spec.on_host and not selection else c for c in configs]
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
    results = [ConfigResult(c) for c in configs]
    lock = threading.Lock()
    done = [0]

    def one(r: ConfigResult) -> None:
        c = r.config
        spec = c.spec.with_kernel(images[c.spec.kernel].kernel)
        sels = [[s] for s in selection] if selection else [[t] for t in c.tiers]
        log = open(os.path.join(log_dir, f"{c.name}.log"), "w") if log_dir else None
        try:
            for sel in sels:
                def echo(line: str) -> None:
                    if log is not None:
                        log.write(line + "\n")
                progress(f"kvmffi matrix: {c.name}: {' '.join(sel)} ...")
                t = run_tier(f"{c.name} {sel[0]}", sel, spec=spec, keyword=keyword, fmt="pretty", strict=strict,
                             echo=echo)
                r.tiers.append(t)
                r.kernel_release = r.kernel_release or t.release
                progress(f"kvmffi matrix: {c.name}: {t.summary()}")
        finally:
            if log is not None:
                log.close()
        with lock:
            done[0] += 1
            progress(f"kvmffi matrix: {done[0]}/{len(results)} configurations done")

    if jobs > 1:
        with ThreadPoolExecutor(max_workers=jobs) as ex:
            list(ex.map(one, results))
    else:
        for r in results:
            one(r)
    return results


def differences(results: list[ConfigResult]) -> dict[str, dict[str, str]]:
    """Tests whose outcome differs between configurations: {test: {config: outcome}}."""
    names = sorted({n for r in results for n in r.outcomes})
    out = {}
    for n in names:
        have = {r.config.name: r.outcomes[n] for r in results if n in r.outcomes}
        if len(have) >= 2 and len(set(have.values())) > 1:
            out[n] = {r.config.name: r.outcomes.get(n, "-") for r in results}
    return out


def only_in_some(results: list[ConfigResult]) -> int:
    """Tests not collected in every configuration (a VM type or flag set the kernel does not offer)."""
    sets = [set(r.outcomes) for r in results if r.outcomes]
    if not sets:
        return 0
    every, some = set(sets[0]), set(sets[0])
    for s in sets[1:]:
        every &= s
        some |= s
    return len(some - every)


def format_table(results: list[ConfigResult]) -> str:
    selftests = any(tr.name.endswith(" selftests") for r in results for tr in r.tiers)
    head = (f"{'configuration':<18} {'kernel':<22} {'machine':<30} pass  fail  skip xfail xpass error"
            + ("  selftests" if selftests else ""))
    lines = [head, "-" * len(head)]
    for r in results:
        c, t = r.config, r.totals
        shape = c.spec.describe() or "-"
        kernel = r.kernel_release or (os.uname().release if c.spec.on_host else c.spec.kernel)
        st = next((tr for tr in r.tiers if tr.name.endswith(" selftests")), None)
        col = "" if not selftests else "  " + (
            "-" if st is None else "could not run" if st.infra_error or not st.totals else
            f"{st.totals['pass']}/{sum(st.totals.values())} pass" + (f", {st.totals['fail']} FAIL" if st.totals['fail']
                                                                      else ""))
        lines.append(f"{c.name:<18} {kernel[:22]:<22} {shape[:30]:<30} {t['pass']:>4} {t['fail']:>5} {t['skip']:>5} "
                     f"{t['xfail']:>5} {t['xpass']:>5} {t['error']:>5}{col}")
    notes = [f"  {r.config.name}: {r.config.note}" for r in results if r.config.note]
    if selftests:
        from .selftests import disagreements
        side = [f"  {r.config.name}: {d}" for r in results for d in disagreements(r.outcomes)]
        notes += (["kvmffi and the kernel's selftests disagree:"] + side) if side else [
            "  kvmffi and the kernel's selftests agree in every configuration (each selftest against the kvmffi "
            "files that test the same area: kvmffi.selftests.COUNTERPARTS)"]
    errors = [f"  {r.config.name}: {t.infra_error.splitlines()[0]}" for r in results for t in r.tiers if t.infra_error]
    diff = differences(results)
    out = "\n".join(lines)
    if notes:
        out += "\n\nnotes:\n" + "\n".join(notes)
    if errors:
        out += "\n\ncould not run:\n" + "\n".join(errors)
    partial = only_in_some(results)
    if partial:
        out += (f"\n\n{partial} tests exist in some configurations only (parametrized over the VM types and "
                "guest_memfd flags each kernel offers)")
    if diff:
        names = [r.config.name for r in results]
        out += f"\n\n{len(diff)} tests differ between configurations ({', '.join(names)}):\n"
        short = {"passed": "pass", "failed": "FAIL", "skipped": "skip", "xfailed": "xfail", "xpassed": "XPASS", "-": "-"}
        for n, per in diff.items():
            out += f"  {n}\n      " + "  ".join(f"{k}={short.get(v, v)}" for k, v in per.items()) + "\n"
    return out


def format_ktap(results: list[ConfigResult]) -> str:
    """One KTAP subtest per configuration, each test's outcome nested in it."""
    lines = ktap.plan(len(results))
    for i, r in enumerate(results, 1):
        outs = r.outcomes
        lines += ["    KTAP version 1", f"    # configuration {r.config.name}: kernel {r.kernel_release or r.config.spec.kernel}"
                  + (f", {r.config.spec.describe()}" if r.config.spec.describe() else ""), f"    1..{len(outs)}"]
        for j, (name, o) in enumerate(outs.items(), 1):
            lines.append(ktap.result(j, name, o != "failed", {"skipped": "SKIP", "xfailed": "XFAIL"}.get(o, ""),
                                     indent="    "))
        lines.append(ktap.totals_line(r.totals, indent="    "))
        lines.append(ktap.result(i, r.config.name, r.ksft != KSFT_FAIL, "SKIP nothing ran" if r.ksft == KSFT_SKIP else ""))
    return "\n".join(lines)


def format_json(results: list[ConfigResult]) -> str:
    return json.dumps({"configs": [r.to_json() for r in results]}, indent=1)


def exit_code(results: list[ConfigResult]) -> int:
    return ktap.combine((r.ksft for r in results), empty=KSFT_SKIP)
