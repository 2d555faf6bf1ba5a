"""Bad configuration and environment: exit 2, one clear message naming the file, the
key and what is expected, every file's problems in one pass, nothing created.

Every ``run`` here must fail before the agent starts: the harness then finds no
ledger, node key or state directory in the case directory. ``--listen 127.0.0.1:0``
keeps the cases that are not about the address off the default port.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from tests.hostile.harness import Case

RUN = ("run", "--config", "{dir}/agent.toml", "--listen", "127.0.0.1:0")
RUN_OWN_LISTEN = ("run", "--config", "{dir}/agent.toml")



def gpu_row(extra: str = "", tail: str = "") -> str:
    """One spec-table row; ``extra`` goes into the row, ``tail`` after its tables."""
    return ('[gpu.x]\nname = "X"\nmatch = ["X"]\narchitecture = "hopper"\nsm_count = 132\n'
            f"max_sm_clock_mhz = 1980\ngpm = true\n{extra}"
            f"[gpu.x.flop_per_clock_per_sm]\nbf16_tensor = 4096\n{tail}")


THRESHOLDS = """
[scopes.all]
categories = ["pre-training"]
inherit = true
[regimes.r]
scope = "all"
status = "internal"
threshold_flop = 1e25
"""


def agent(body: str, **files: str | bytes) -> dict[str, str | bytes]:
    """An ``agent.toml`` with ``body`` (and other files beside it)."""
    return {"agent.toml": body, **files}


def specs_with(extra: str = "", tail: str = "") -> dict[str, str | bytes]:
    return agent('[agent]\nspec_file = "{dir}/gpus.toml"\n',
                 **{"gpus.toml": gpu_row(extra, tail)})


def thresholds_with(regime_extra: str, tail: str = "") -> dict[str, str | bytes]:
    return agent('[agent]\nthresholds_file = "{dir}/th.toml"\n',
                 **{"th.toml": THRESHOLDS + regime_extra + tail})


class _HeldPort:
    """A listening socket on a free port of 127.0.0.1, and an agent.toml that asks
    for that port."""

    def __init__(self, directory: Path) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        port = self.sock.getsockname()[1]
        (directory / "agent.toml").write_text(f'[agent]\nlisten = "127.0.0.1:{port}"\n')

    def close(self) -> None:
        self.sock.close()


def _nvml_unavailable() -> bool:
    from agent.sources.nvml import nvml_unavailable_reason

    return nvml_unavailable_reason() is not None


ONE_PASS = agent(
    '[agent]\ninterval_s = nan\nspec_file = "{dir}/gpus.toml"\n'
    'thresholds_file = "{dir}/th.toml"\n',
    **{"gpus.toml": gpu_row("bogus = 1\n"), "th.toml": THRESHOLDS + "deadline_days = -1\n"})
WEB_AND_SPECS = agent(
    '[agent]\nspec_file = "{dir}/gpus.toml"\n[web]\nconfig_file = "web.yml"\n',
    **{"gpus.toml": gpu_row().replace("sm_count = 132", "sm_count = 0"),
       "web.yml": "tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n"
                  "  client_auth_type: [RequireAndVerifyClientCert]\n"})

CASES = [
    # --- numbers of the agent config: NaN, inf, negative, absurd ----------------------
    Case("agent-interval-nan", RUN, 2, "agent.interval_s: expected a finite number",
         files=agent("[agent]\ninterval_s = nan\n")),
    Case("agent-checkpoint-inf", RUN, 2, "agent.checkpoint_s: expected a finite number",
         files=agent("[agent]\ncheckpoint_s = inf\n")),
    Case("agent-interval-absurd", RUN, 2,
         "agent.interval_s: expected a number of seconds >= 0.1 and <= 3600",
         files=agent("[agent]\ninterval_s = 1e9\n")),
    Case("agent-record-negative", RUN, 2,
         "agent.record_s: expected a number of seconds >= 0.5 and <= 86400",
         files=agent("[agent]\nrecord_s = -60\n")),
    Case("agent-integrate-every-zero", RUN, 2,
         "agent.integrate_every: expected an integer number of ticks >= 1",
         files=agent("[agent]\nintegrate_every = 0\n")),
    Case("agent-integrate-every-beyond-64-bits", RUN, 2,
         "agent.integrate_every: expected an integer within 64 bits",
         files=agent("[agent]\nintegrate_every = 99999999999999999999999\n")),
    Case("agent-export-runs-for-negative", RUN, 2, "agent.export_runs_for_s: expected",
         files=agent("[agent]\nexport_runs_for_s = -1\n")),
    Case("agent-exit-after-inf", RUN, 2, "agent.exit_after_s: expected a finite number",
         files=agent("[agent]\nexit_after_s = inf\n")),
    Case("estimator-max-gap-zero", RUN, 2, "estimator.max_gap_s: expected a number of seconds > 0",
         files=agent("[estimator]\nmax_gap_s = 0\n")),
    Case("estimator-fraction-nan", RUN, 2,
         "estimator.utilization_efficiency: expected a finite number",
         files=agent("[estimator]\nutilization_efficiency = nan\n")),
    Case("thresholds-evaluate-every-nan", RUN, 2,
         "thresholds.evaluate_every_s: expected a finite number",
         files=agent("[thresholds]\nevaluate_every_s = nan\n")),
    Case("thresholds-evaluate-every-absurd", RUN, 2,
         "thresholds.evaluate_every_s: expected a number of seconds >= 0.1 and <= 86400",
         files=agent("[thresholds]\nevaluate_every_s = 1e300\n")),
    Case("thresholds-levels-nan", RUN, 2, "thresholds.levels[1]: expected a finite number",
         files=agent("[thresholds]\nlevels = [0.5, nan]\n")),
    Case("sim-gpus-absurd", RUN, 2, "sim.gpus: expected an integer >= 1 and <= 64",
         files=agent("[sim]\ngpus = 100000\n")),
    Case("sim-seed-negative", RUN, 2, "sim.seed: expected an integer >= 0",
         files=agent("[sim]\nseed = -1\n")),
    Case("sim-time-scale-inf", RUN, 2, "sim.time_scale: expected a finite number",
         files=agent("[sim]\nvirtual_time = true\ntime_scale = inf\n")),
    Case("sim-epoch-absurd", RUN, 2, "sim.epoch_unix_s: expected a wall-clock time",
         files=agent("[sim]\nepoch_unix_s = 1e15\n")),
    Case("sim-workload-step-absurd", RUN, 2, "sim.workload.compute_s: expected",
         files=agent("[sim.workload]\ncompute_s = 1e300\n")),
    Case("sim-job-on-a-gpu-not-simulated", RUN, 2, "sim.jobs[0].gpus: expected GPU indices",
         files=agent("[sim]\ngpus = 2\n[[sim.jobs]]\ngpus = [0, 5]\n")),
    Case("attribution-refresh-absurd", RUN, 2, "attribution.refresh_s: expected",
         files=agent("[attribution]\nrefresh_s = 1e300\n")),
    Case("models-declared-flop-inf", RUN, 2, "models.m.declared_flop: expected a finite number",
         files=agent("[models.m]\ndeclared_flop = inf\n")),
    Case("models-declared-flop-absurd", RUN, 2, "models.m.declared_flop: expected",
         files=agent("[models.m]\ndeclared_flop = 1e300\n")),
    Case("textfile-every-zero", RUN, 2, "textfile.every_s: expected a number of seconds > 0",
         files=agent("[textfile]\nevery_s = 0\n")),
    Case("notify-poll-inf", RUN, 2, "notify.poll_s: expected a finite number",
         files=agent("[notify]\npoll_s = inf\n")),
    Case("notify-resend-absurd", RUN, 2,
         "notify.alertmanager[0].resend_s: expected a number of seconds >= 1 and <= 86400",
         files=agent('[[notify.alertmanager]]\nname = "am"\nurl = "http://am.example:9093"\n'
                     "resend_s = 1e9\n")),
    Case("notify-url-bad-ipv6", RUN, 2, "notify.alertmanager[0].url: expected",
         files=agent('[[notify.alertmanager]]\nname = "am"\nurl = "http://[zz]:9093"\n')),
    Case("agent-state-dir-nul", RUN, 2, "agent.state_dir: expected text without NUL",
         files=agent('[agent]\nstate_dir = "var\\u0000x"\n')),
    # --- settings that contradict each other -------------------------------------------
    Case("interval-above-max-gap", RUN, 2,
         "agent.interval_s: expected a number of seconds <= estimator.max_gap_s (5)",
         files=agent("[agent]\ninterval_s = 10\ncheckpoint_s = 20\n")),
    Case("interval-above-checkpoint", RUN, 2,
         "agent.interval_s: expected a number of seconds <= agent.checkpoint_s (1)",
         files=agent("[agent]\ninterval_s = 2\ncheckpoint_s = 1\n")),
    Case("record-below-checkpoint", RUN, 2,
         "agent.record_s: expected a number of seconds >= agent.checkpoint_s (30)",
         files=agent("[agent]\ncheckpoint_s = 30\nrecord_s = 10\n")),
    Case("cli-interval-nan", ("run", "--interval", "nan", "--listen", "127.0.0.1:0"), 2,
         "--interval: expected a number of seconds >= 0.1 and <= 3600"),
    Case("cli-interval-above-max-gap", ("run", "--interval", "30", "--listen", "127.0.0.1:0"),
         2, "--interval: expected a number of seconds <= estimator.max_gap_s"),
    Case("cli-exit-after-negative", ("run", "--exit-after", "-5", "--listen", "127.0.0.1:0"),
         2, "--exit-after: expected a number of seconds > 0"),
    Case("cli-interval-and-file-together", (*RUN, "--interval", "inf"), 2,
         "--interval: expected", files=agent("[agent]\nrecord_s = -1\n")),
    # --- the listen address: malformed, unresolvable, not ours, in use -----------------
    Case("listen-malformed", RUN_OWN_LISTEN, 2, 'agent.listen: expected "host:port"',
         files=agent('[agent]\nlisten = "localhost"\n')),
    Case("listen-port-too-big", ("run", "--listen", "127.0.0.1:70000"), 2,
         '--listen: expected "host:port" with a port between 0 and 65535'),
    Case("listen-unresolvable", ("run", "--listen", "no-such-host.invalid:9947"), 2,
         "'no-such-host.invalid' does not"),
    Case("listen-not-this-machine", ("run", "--listen", "192.0.2.1:9947"), 2,
         "--listen: expected an address of this machine (192.0.2.1:9947 is not one)"),
    Case("listen-in-use", RUN_OWN_LISTEN, 2, "is in use by another process",
         setup=_HeldPort),
    # --- the state directory and the summary file --------------------------------------
    Case("state-dir-under-a-file", RUN, 2,
         "agent.state_dir: expected a directory that can be created",
         files=agent('[agent]\nstate_dir = "{dir}/plain/var"\n', plain="not a directory\n")),
    Case("state-dir-is-a-file", RUN, 2, "agent.state_dir: expected a directory (",
         files=agent('[agent]\nstate_dir = "{dir}/plain"\n', plain="not a directory\n")),
    Case("state-dir-in-proc", RUN, 2, "agent.state_dir: expected a directory that can be created",
         files=agent('[agent]\nstate_dir = "/proc/flopledger-hostile/var"\n')),
    Case("summary-in-missing-directory", RUN, 2,
         "agent.summary_file: expected a file in an existing directory",
         files=agent('[agent]\nsummary_file = "{dir}/none/summary.json"\n')),
    Case("summary-is-a-directory", (*RUN, "--summary", "{dir}/sub"), 2,
         "agent.summary_file: expected a file path", files={"agent.toml": "", "sub/x": "x"}),
    # --- the spec table -----------------------------------------------------------------
    Case("specs-datasheet-nan", RUN, 2, "gpu.x.datasheet.bf16_tensor.value: expected",
         files=specs_with(tail='[gpu.x.datasheet]\nbf16_tensor = { value = "NaN", '
                               'unit = "TFLOPS", clock_mhz = 1830 }\n')),
    Case("specs-clock-inf", RUN, 2, "gpu.x.datasheet.bf16_tensor.clock_mhz: expected a finite",
         files=specs_with(tail='[gpu.x.datasheet]\nbf16_tensor = { value = "989.4", '
                               'unit = "TFLOPS", clock_mhz = inf }\n')),
    Case("specs-datasheet-not-a-table", RUN, 2, "gpu.x.datasheet: expected a table",
         files=specs_with("datasheet = 3\n")),
    Case("specs-sm-count-absurd", RUN, 2,
         "gpu.x.sm_count: expected a positive integer >= 1 and <= 1024",
         files=agent('[agent]\nspec_file = "{dir}/gpus.toml"\n',
                     **{"gpus.toml": gpu_row().replace("132", "1000000")})),
    Case("specs-unknown-key", RUN, 2, "gpu.x.bogus: expected one of the known keys",
         files=specs_with("bogus = 1\n")),
    Case("specs-per-clock-float", RUN, 2,
         "gpu.x.flop_per_clock_per_sm.fp8_tensor: expected a positive integer",
         files=specs_with(tail="fp8_tensor = 8192.5\n")),
    Case("specs-pci-id-not-16-bit", RUN, 2, "gpu.x.pci_device_ids[0]: expected a 16-bit PCI",
         files=specs_with("pci_device_ids = [70000]\n")),
    Case("specs-pci-id-text", RUN, 2, "gpu.x.pci_device_ids[0]: expected a 16-bit PCI",
         files=specs_with('pci_device_ids = ["0x2330"]\n')),
    Case("specs-compute-capability-garbled", RUN, 2,
         "gpu.x.compute_capability: expected a compute capability",
         files=specs_with('compute_capability = "nine"\n')),
    Case("resolve-compute-capability-garbled", ("gpus", "--resolve", "X",
                                                "--compute-capability", "9.x"), 2,
         "argument --compute-capability: expected a compute capability such as 9.0"),
    Case("resolve-sm-count-negative", ("gpus", "--resolve", "X", "--sm-count", "-4"), 2,
         "argument --sm-count: expected a number of SMs from 1 to 1024"),
    Case("resolve-pci-id-garbled", ("gpus", "--resolve", "X", "--pci-device-id", "zz"), 2,
         "argument --pci-device-id: expected a 16-bit PCI device ID"),
    Case("sim-gpu-model-not-in-table", RUN, 2, "sim.gpu_model: expected a key of the GPU spec",
         files=agent('[sim]\ngpu_model = "h900"\n')),
    Case("sim-precision-the-gpu-lacks", RUN, 2, "sim.workload.precision: expected a precision",
         files=agent('[sim]\ngpu_model = "v100_sxm2"\n')),
    # --- the thresholds file -------------------------------------------------------------
    Case("thresholds-flop-inf", RUN, 2, "regimes.r.fallback_flop: expected a finite number",
         files=thresholds_with("fallback_flop = inf\n")),
    Case("thresholds-deadline-negative", RUN, 2,
         "regimes.r.deadline_days: expected a number of days >= 0 and <= 3660",
         files=thresholds_with("deadline_days = -14\n")),
    Case("thresholds-flop-absurd", RUN, 2,
         "regimes.r.fallback_flop: expected a positive number > 0 and <= 1e+40",
         files=thresholds_with("fallback_flop = 1e300\n")),
    Case("thresholds-price-nan", RUN, 2, "pricing.usd_per_gpu_hour: expected a finite number",
         files=thresholds_with("", "[pricing]\nusd_per_gpu_hour = nan\n")),
    Case("thresholds-category-table", RUN, 2, "scopes.all.categories: expected",
         files=agent('[agent]\nthresholds_file = "{dir}/th.toml"\n',
                     **{"th.toml": THRESHOLDS.replace('["pre-training"]', "[{ a = 1 }]")})),
    Case("thresholds-status-command", ("status", "--config", "{dir}/agent.toml"), 2,
         "thresholds.window_s: expected a finite number",
         files=agent("[thresholds]\nwindow_s = -inf\n")),
    # --- every file's problems in one pass ------------------------------------------------
    Case("one-pass-agent-config", RUN, 2, "agent.interval_s: expected a finite number",
         files=ONE_PASS),
    Case("one-pass-spec-table", RUN, 2, "gpu.x.bogus: expected one of the known keys",
         files=ONE_PASS),
    Case("one-pass-thresholds", RUN, 2, "regimes.r.deadline_days: expected", files=ONE_PASS),
    Case("one-pass-web-config", RUN, 2, "tls_server_config.client_auth_type: expected one of",
         files=WEB_AND_SPECS),
    Case("one-pass-spec-with-web", RUN, 2, "gpu.x.sm_count: expected", files=WEB_AND_SPECS),
    Case("one-pass-machine", RUN_OWN_LISTEN, 2, "agent.state_dir: expected",
         files=agent('[agent]\nstate_dir = "{dir}/plain"\nlisten = "192.0.2.1:1"\n'
                     'thresholds_file = "{dir}/th.toml"\n', plain="x\n",
                     **{"th.toml": THRESHOLDS + "deadline_days = -1\n"})),
    # --- the file itself ------------------------------------------------------------------
    Case("config-not-utf8", RUN, 2, "valid TOML in UTF-8",
         files={"agent.toml": b'[agent]\nnode = "\xff\xfe"\n'}),
    Case("config-nested-too-deep", RUN, 2, "valid TOML nested less deeply",
         files={"agent.toml": "x = " + "[" * 5000 + "]" * 5000 + "\n"}),
    Case("config-is-a-directory", ("run", "--config", "{dir}/conf"), 2, "Is a directory",
         files={"conf/x": "x"}),
    Case("gpus-with-bad-config", ("gpus", "--config", "{dir}/agent.toml"), 2,
         "sim.gpus: expected an integer >= 1 and <= 64", files=agent("[sim]\ngpus = 0\n")),
]

if os.geteuid() != 0:
    # Root writes through permission bits, so this case means something only for others.
    CASES.append(Case("state-dir-not-writable", RUN, 2,
                      "agent.state_dir: expected a writable directory",
                      files=agent('[agent]\nstate_dir = "{dir}/ro"\n', **{"ro/.keep": ""}),
                      setup=lambda d: os.chmod(d / "ro", 0o500)))

if _nvml_unavailable():
    # A source that cannot start (exit 3) leaves no ledger or node key behind: the
    # source is opened before the ledger.
    CASES.append(Case("nvml-unavailable-creates-nothing",
                      ("run", "--source", "nvml", "--listen", "127.0.0.1:0"), 3,
                      "NVML source requested but unavailable"))
