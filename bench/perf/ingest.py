"""Ingest throughput, the agent's memory, and series latency, against real receivers in one run.

Ingest: the same synthetic 512x512 CT slices (new UIDs every pass) from the same
sender (dcmtk ``storescu --max-pdu 131072``, ``TCP_NODELAY=1``) to dcmtk
``storescp``, Orthanc and ``ftl-agent serve`` (inference on), the receivers in
turns within each pass, over 1 and over 4 concurrent associations. A pass
ends when the sender has every status back: for the agent each 0x0000 means
fsynced and indexed. After each pass the same files are written and fsynced
one by one with no network (the disk floor), so a slow-disk day is told apart
from a slower receiver. Between passes the agent finishes the pass's series
(result written), and after every receiver's turn the dirty pages it left
(storescp syncs nothing) are written out untimed (``sync``), so every pass
starts from the same state and no receiver pays for another's write-back.

Memory: the agent's peak RSS (``VmHWM``) over the ingest run, and where its
resident memory sits at the end (``/proc/PID/smaps`` by mapping).

Series latency: the 238-slice CQ500 series (``storescu -xs``, new UIDs each
pass), last slice to result, alone and while another association streams
synthetic slices, at the default quiet period.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ftlct.bench.perf import peers
from ftlct.bench.perf.measure import goal, machine_load, ratio, summary

SLICE_SIZE = 512


def synthetic_passes(work: Path, passes: int, slices: int) -> list[list[Path]]:
    """``passes`` series of ``slices`` 512x512 CT phantoms, each with its own UIDs."""
    from ftlct.bench.demo_data import phantom_study

    rng = np.random.default_rng(0)
    sets = []
    for index in range(passes):
        folder = work / "slices" / f"pass-{index}"
        folder.mkdir(parents=True, exist_ok=True)
        study = phantom_study("normal", folder, rng, slices=slices, size=SLICE_SIZE)
        sets.append(study.paths)
    return sets


def smaps_breakdown(pid: int, top: int = 10) -> dict:
    """Resident kB by mapping (shared library, ``[heap]``, anonymous), largest first."""
    by_mapping: dict[str, int] = defaultdict(int)
    current = "[anonymous]"
    try:
        with open(f"/proc/{pid}/smaps") as handle:
            for line in handle:
                first = line.split(maxsplit=1)[0]
                if "-" in first and not first.endswith(":"):
                    parts = line.split()
                    current = Path(parts[5]).name if len(parts) > 5 else "[anonymous]"
                elif first == "Rss:":
                    by_mapping[current] += int(line.split()[1])
    except OSError:
        return {}
    rows = sorted(by_mapping.items(), key=lambda kv: -kv[1])
    return {"total_mb": round(sum(by_mapping.values()) / 1024, 1)} | {
        name: round(kb / 1024, 1) for name, kb in rows[:top]
    }


def disk_floor_seconds(files: list[Path], folder: Path) -> float:
    """Seconds to write ``files``' bytes one by one into ``folder``, each file and its directory
    fsynced before the next: what durability alone costs a receiver on this disk, no network,
    no parsing, no index. The copies are removed afterwards."""
    contents = [path.read_bytes() for path in files]  # read before the clock starts
    folder.mkdir(parents=True, exist_ok=True)
    directory = os.open(folder, os.O_RDONLY)
    written = []
    try:
        started = time.perf_counter()
        for index, data in enumerate(contents):
            target = folder / f"{index:06d}.dcm"
            with open(target, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            written.append(target)
            os.fsync(directory)
        return time.perf_counter() - started
    finally:
        os.close(directory)
        for target in written:
            target.unlink(missing_ok=True)


class PeakPss:
    """The largest summed PSS of each receiver's process tree, sampled every ``period_s`` on
    a thread while the context is open. The kernel keeps a peak RSS (``VmHWM``) per process
    but none for PSS, and the processes of a tree peak at different times: sampling their
    sum is what measures the tree at its largest."""

    def __init__(self, receivers: list, period_s: float = 0.25):
        self.receivers = receivers
        self.period_s = period_s
        self.peak: dict[str, int] = dict.fromkeys((r.name for r in receivers), 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-pss", daemon=True)

    def __enter__(self) -> PeakPss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()  # the state at the end counts too

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self._sample()

    def _sample(self) -> None:
        for receiver in self.receivers:
            pss = receiver.pss_bytes()
            if pss is not None:
                self.peak[receiver.name] = max(self.peak[receiver.name], pss)

    def mb(self, receiver) -> float:
        return round(self.peak[receiver.name] / 2**20, 1)


def _agent_env(
    quiet_period_s: float, eager: bool = True, receive_processes: int = 1
) -> dict[str, str]:
    env = {
        "FTLCT_AGENT_SERIES_QUIET_PERIOD_S": str(quiet_period_s),
        "FTLCT_AGENT_DICOM_RECEIVE_PROCESSES": str(receive_processes),
    }
    return env if eager else env | {"FTLCT_AGENT_INFERENCE_EAGER": "false"}


# ``dicom.receive_processes = 2`` (agent/dicom/receive_workers.py), measured beside the default.
TWO_PROCESSES = "agent-2-receive-processes"


@contextlib.contextmanager
def received_work(folder: Path) -> Iterator[Path]:
    """``folder`` emptied for a section whose receivers keep what they get, and emptied again
    afterwards but for the peers' logs. A run then starts from no earlier run's data (an
    index or a PACS already holding thousands of instances would be measured too) and leaves
    no gigabytes behind (the ingest section receives ~10 GB over its receivers)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        for entry in folder.iterdir():
            if entry.is_dir():  # receivers' storage, the slices; the *.log files stay
                shutil.rmtree(entry, ignore_errors=True)


def ingest_section(model_path: Path, work: Path, passes: int, slices: int) -> dict:
    """storescp vs Orthanc vs the agent, 1 and 4 associations; the agent's memory over it.
    ``work`` is emptied before and after (``received_work``)."""
    with received_work(work):
        return _ingest_section(model_path, work, passes, slices)


def _ingest_section(model_path: Path, work: Path, passes: int, slices: int) -> dict:
    """storescp vs Orthanc vs the agent, 1 and 4 associations; the agent's memory over it.

    ``agent-eager-off`` (``inference.eager = false``: the series is embedded after its quiet
    period, outside the timed pass) shows what embedding while slices arrive costs the ingest;
    ``agent-2-receive-processes`` receives in two worker processes (CPU and memory are the
    whole process tree's).
    """
    sets = {n: synthetic_passes(work / f"assoc-{n}", passes, slices) for n in (1, 4)}
    size = int(np.median([p.stat().st_size for p in sets[1][0]]))
    seconds: dict[int, dict[str, list[float]]] = {n: defaultdict(list) for n in sets}
    cpu: dict[int, dict[str, list[float]]] = {n: defaultdict(list) for n in sets}
    floor: dict[int, list[float]] = {n: [] for n in sets}
    record: dict = {}
    with (
        machine_load(record),
        peers.storescp(work) as dcmtk,
        peers.orthanc(work) as pacs,
        peers.agent(work, model_path, _agent_env(1.0)) as agent,
        peers.agent(work, model_path, _agent_env(1.0, eager=False), "agent-eager-off") as lazy,
        peers.agent(work, model_path, _agent_env(1.0, receive_processes=2), TWO_PROCESSES) as split,
    ):
        receivers = [dcmtk, pacs, agent, lazy, split]
        # summed PSS of both agents' process trees, sampled over the ingest passes
        with PeakPss([agent, split]) as sampler:
            done = dict.fromkeys((agent.name, lazy.name, split.name), 0)
            for associations, passes_files in sets.items():
                for index, files in enumerate(passes_files):
                    turn = index % len(receivers)
                    order = receivers[turn:] + receivers[:turn]  # who goes first rotates
                    for receiver in order:
                        before = receiver.cpu_seconds()
                        seconds[associations][receiver.name].append(
                            peers.send(receiver, files, associations)
                        )
                        after = receiver.cpu_seconds()
                        # Untimed: what a receiver left unsynced (storescp syncs nothing) is
                        # written out now, not during the next receiver's pass.
                        os.sync()
                        if before is not None and after is not None:
                            cpu[associations][receiver.name].append(after - before)
                        if receiver.name in done:  # its series is inferred before the next pass
                            done[receiver.name] += 1
                            peers.wait_for_results(receiver, done[receiver.name])
                    floor[associations].append(disk_floor_seconds(files, work / "disk-floor"))
        memory = {
            "agent_peak_rss_mb": round((agent.peak_rss_bytes() or 0) / 2**20, 1),
            "agent_rss_at_end_mb": round((agent.rss_bytes() or 0) / 2**20, 1),
            "agent_resident_by_mapping_mb": smaps_breakdown(agent.process.pid),
            "orthanc_peak_rss_mb": round((pacs.peak_rss_bytes() or 0) / 2**20, 1),
            # the serve process plus its two receive workers, each one's own peak summed
            "agent_2_receive_processes_peak_rss_mb": round(
                (split.peak_rss_bytes() or 0) / 2**20, 1
            ),
            # Shared pages counted once: for one process close to its RSS; for serve plus
            # workers (which share the interpreter and its libraries) what the tree costs.
            "agent_peak_pss_mb": sampler.mb(agent),
            "agent_2_receive_processes_peak_pss_mb": sampler.mb(split),
        }
    rows = {}
    for associations, by_receiver in seconds.items():
        figures = {name: summary(s, "s") for name, s in by_receiver.items()}
        rows[f"{associations}_association{'s' if associations > 1 else ''}"] = {
            "seconds": figures,
            # CPU time the receiver used during the pass: what a busy machine makes wall time of.
            "cpu_seconds": {name: summary(c, "s") for name, c in cpu[associations].items()},
            "agent_vs_orthanc": ratio(figures["orthanc"]["median"], figures["agent"]["median"]),
            "agent_vs_storescp": ratio(figures["storescp"]["median"], figures["agent"]["median"]),
            "agent_eager_off_vs_orthanc": ratio(
                figures["orthanc"]["median"], figures["agent-eager-off"]["median"]
            ),
            "agent_2_receive_processes_vs_orthanc": ratio(
                figures["orthanc"]["median"], figures[TWO_PROCESSES]["median"]
            ),
            "agent_2_receive_processes_vs_storescp": ratio(
                figures["storescp"]["median"], figures[TWO_PROCESSES]["median"]
            ),
            # The same files written and fsynced one by one: a slow-disk day shows here first.
            "disk_floor_seconds": summary(floor[associations], "s"),
            # storescp plus the floor: what a storescp that synced each file would take at least.
            "agent_vs_storescp_plus_disk_floor": ratio(
                figures["storescp"]["median"] + float(np.median(floor[associations])),
                figures["agent"]["median"],
            ),
        }
    one, four = rows["1_association"], rows["4_associations"]
    return {
        "slices": slices,
        "slice_bytes": size,
        "passes": passes,
        "sender": f"{peers.STORESCU} --max-pdu {peers.SENDER_MAX_PDU}, TCP_NODELAY=1",
        "load": record["load"],
        "by_associations": rows,
        "memory": memory,
        "goals": [
            goal(
                "ingest vs Orthanc",
                one["agent_vs_orthanc"],
                1.0,
                at_least=True,
                what="Orthanc seconds / agent seconds, 1 association",
            ),
            goal(
                "ingest vs storescp",
                one["agent_vs_storescp"],
                0.5,
                at_least=True,
                what="storescp seconds / agent seconds, 1 association",
            ),
            goal(
                "ingest vs Orthanc, 4 associations",
                four["agent_vs_orthanc"],
                1.0,
                at_least=True,
                what="Orthanc seconds / agent seconds, 4 concurrent associations",
            ),
            goal(
                "ingest vs Orthanc, 4 associations, 2 receive processes",
                four["agent_2_receive_processes_vs_orthanc"],
                1.0,
                at_least=True,
                what="Orthanc seconds / agent (dicom.receive_processes = 2) seconds, 4 associations",
            ),
            goal(
                "agent memory",
                memory["agent_peak_rss_mb"],
                300,
                at_least=False,
                what="peak RSS (MB) of ftl-agent serve over the ingest run, inference on",
            ),
            goal(
                "agent memory, 2 receive processes",
                memory["agent_2_receive_processes_peak_pss_mb"],
                300,
                at_least=False,
                what=(
                    "peak summed PSS (MB) of serve plus its 2 receive workers, sampled every "
                    "0.25 s: pages they share counted once (each one's peak RSS summed: "
                    f"{memory['agent_2_receive_processes_peak_rss_mb']} MB)"
                ),
            ),
        ],
    }


def _fresh_uids(source: list[Path], out: Path) -> list[Path]:
    """Copies of a series with new Study/Series/SOP UIDs; pixel data untouched (still JPEG)."""
    import pydicom
    from pydicom.uid import generate_uid

    out.mkdir(parents=True, exist_ok=True)
    mapping: dict[str, str] = defaultdict(generate_uid)
    copies = []
    for index, path in enumerate(source):
        ds = pydicom.dcmread(path)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
            setattr(ds, keyword, mapping[getattr(ds, keyword)])
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        copy = out / f"{index:04d}.dcm"
        ds.save_as(copy)
        copies.append(copy)
    return copies


def _stream(agent, sets: list[list[Path]], stop: threading.Event, sent: list[int]) -> None:
    index = 0
    while not stop.is_set():
        files = sets[index % len(sets)]
        if index >= len(sets):  # a set already sent: give it new UIDs first
            files = _fresh_uids(files, files[0].parent.parent / f"again-{index}")
        peers.send(agent, files, 1)
        sent[0] += len(files)
        index += 1


def series_latency_section(
    model_path: Path, work: Path, cq500: Path, passes: int, quiet_period_s: float = 5.0
) -> dict:
    """Last CQ500 slice to its result: alone, and while another association streams.
    ``work`` is emptied before and after (``received_work``)."""
    with received_work(work):
        return _series_latency_section(model_path, work, cq500, passes, quiet_period_s)


def _series_latency_section(
    model_path: Path, work: Path, cq500: Path, passes: int, quiet_period_s: float
) -> dict:
    """Last CQ500 slice to its result: alone, and while another association streams."""
    source = sorted(cq500.glob("*.dcm"))
    background = synthetic_passes(work / "background", 3, 100)
    latencies: dict[str, list[float]] = defaultdict(list)
    streamed = [0]
    record: dict = {}
    with (
        machine_load(record),
        peers.agent(work, model_path, _agent_env(quiet_period_s), "agent-latency") as agent,
    ):
        for index in range(passes):
            for condition in ("alone", "while another association streams"):
                files = _fresh_uids(
                    source, work / "cq500" / f"{index}-{len(latencies[condition])}-{condition[:5]}"
                )
                stop = threading.Event()
                streamer = None
                if condition == "alone":
                    # alone means alone: the stream's series are inferred before it starts
                    peers.wait_until_idle(agent)
                before = {r["series_uid"] for r in peers.agent_results(agent)}
                if condition != "alone":
                    streamer = threading.Thread(
                        target=_stream, args=(agent, background, stop, streamed), daemon=True
                    )
                    streamer.start()
                    time.sleep(0.5)  # the stream is running before the series starts
                try:
                    peers.send(agent, files, 1, "-xs")
                    result = _cq500_result(agent, before)
                finally:
                    stop.set()
                    if streamer is not None:
                        streamer.join(timeout=600)
                latencies[condition].append(result["latency_s"])
        peak = agent.peak_rss_bytes()
    figures = {name: summary(v, "s") for name, v in latencies.items()}
    loaded = figures["while another association streams"]["median"]
    return {
        "series": "CQ500 head CT, 238 JPEG Lossless slices (storescu -xs)",
        "quiet_period_s": quiet_period_s,
        "latency": figures,
        "background_slices_streamed": streamed[0],
        "agent_peak_rss_mb": round((peak or 0) / 2**20, 1),
        "load": record["load"],
        "goal": goal(
            "series latency",
            loaded,
            quiet_period_s + 0.5,
            at_least=False,
            what="seconds from the last slice to the result while another association "
            "streams (quiet period + 0.5 s)",
        ),
    }


def _cq500_result(agent, before: set[str], timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for result in peers.agent_results(agent):
            if result["series_uid"] not in before and result["n_instances"] >= 200:
                return result
        time.sleep(0.1)
    raise peers.PeerError(f"no CQ500 result after {timeout} s")
