#!/usr/bin/env python3
"""Ingest benchmark (not a test): instances/s and MB/s received over loopback
from dcmtk storescu, on 1, 8 and 20 associations in parallel (--associations),
by cxr-led (fsync + PostgreSQL), dcmtk storescp and Orthanc, on the same
files, and each receiver's peak RSS (VmHWM from /proc; storescp forks a child
per association, so it has none to show), and the CPU time each receiver
spent per instance while the senders ran (from /proc: the process and its
children, PostgreSQL's not included). Beside them, two yardsticks for the
disk: storescp's rate had it made its files durable by the end of the run
(one `sync` after the senders finish), and an fsync loop doing cxr-led's
durability steps alone (write, fsync, rename, fsync folder, on as many
threads as associations). Every run starts after a `sync`, so no run pays for
the writeback of the one before. Prints a table with ratios and writes
out/bench/ingest.json.

Needs: dcmtk (storescu, storescp, dcmodify, echoscu), Orthanc (optional, skip
with --no-orthanc), a PostgreSQL server ($DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/postgres) and psql, and a built cxr-ledd.

    python3 daemon/bench/ingest.py --cxr-ledd $CARGO_TARGET_DIR/release/cxr-ledd
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "daemon" / "tests" / "fixtures"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_echo(port, aec, limit=60):
    start = time.time()
    while time.time() - start < limit:
        r = subprocess.run(["echoscu", "-aet", "BENCH", "-aec", aec, "127.0.0.1", str(port)], capture_output=True)
        if r.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"receiver on {port} did not answer C-ECHO")


def peak_rss_mib(proc):
    """The process's peak resident set (VmHWM) in MiB, or None."""
    try:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def cpu_seconds(pid):
    """CPU time (user + system) of a process and its children so far: its own,
    what it has reaped (storescp --fork reaps its children), and that of the
    children still listed (running or exited but not yet reaped)."""
    tick = os.sysconf("SC_CLK_TCK")

    def stat(p):
        text = Path(f"/proc/{p}/stat").read_text()
        fields = text[text.rindex(")") + 2:].split()
        return fields[1], sum(int(x) for x in fields[11:15])  # ppid; utime, stime, cutime, cstime

    total = stat(pid)[1]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(pid):
            try:
                ppid, ticks = stat(entry.name)
            except (OSError, ValueError, IndexError):
                continue
            if ppid == str(pid):
                total += ticks
    return total / tick


def make_copies(source, folder, n, tag):
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        target = folder / f"{tag}_{i:05d}.dcm"
        shutil.copyfile(source, target)
        subprocess.run(
            ["dcmodify", "-nb", "-m", f"(0008,0018)=2.25.{os.getpid()}{i:06d}{len(tag)}",
             "-m", f"(0020,000d)=2.25.{os.getpid()}9{len(tag)}", str(target)],
            check=True, capture_output=True)
        files.append(target)
    return files


def send(port, aec, files, parallel):
    groups = [files[i::parallel] for i in range(parallel)]
    start = time.time()
    procs = [subprocess.Popen(["storescu", "-v", "-aet", f"BENCH{i}", "-aec", aec, "--max-pdu", "65536",
                               "127.0.0.1", str(port)] + [str(f) for f in g],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i, g in enumerate(groups) if g]
    outputs = [p.communicate()[0] for p in procs]
    elapsed = time.time() - start
    ok = sum(o.count("Received Store Response (Success)") for o in outputs)
    if ok != len(files) or any(p.returncode for p in procs):
        raise RuntimeError(f"only {ok} of {len(files)} stored:\n" + outputs[0][-2000:])
    return elapsed


def fsync_ceiling(files, parallel, folder):
    """Instances/s the disk allows for cxr-led's durability steps alone: on
    `parallel` threads, each file's bytes (already in the page cache) written
    in 1 MiB pieces, fsynced, renamed and the folder fsynced; no network, no
    parsing, no database. No receiver that fsyncs every instance can go faster."""
    folder.mkdir()
    groups = [files[i::parallel] for i in range(parallel)]

    def store(thread, group):
        for n, source in enumerate(group):
            data = source.read_bytes()
            part, final = folder / f"{thread}-{n}.part", folder / f"{thread}-{n}.dcm"
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            try:
                for offset in range(0, len(data), 1 << 20):
                    os.write(fd, data[offset:offset + (1 << 20)])
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(part, final)
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    os.sync()
    start = time.time()
    threads = [threading.Thread(target=store, args=(i, g)) for i, g in enumerate(groups) if g]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.time() - start
    shutil.rmtree(folder, ignore_errors=True)
    return elapsed


class CxrLed:
    name = "cxr-led"
    aec = "CXRLED"

    def __init__(self, binary, work):
        self.binary, self.work = binary, work

    def start(self):
        self.db = f"cxrled_bench_{os.getpid()}_{int(time.time() * 1000)}"
        admin = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
        self.admin = admin
        subprocess.run(["psql", admin, "-qc", f"CREATE DATABASE {self.db}"], check=True)
        base = admin.split("?")[0].rsplit("/", 1)[0]
        self.port = free_port()
        self.spool = self.work / "cxrled-spool"
        config = self.work / "cxrled.toml"
        config.write_text(
            f'[ingest]\nlisten = "127.0.0.1:{self.port}"\nspool-dir = "{self.spool}"\nmax-pdu-length = 65536\n'
            f'[tracker]\nquiet-period-secs = 3600.0\n[database]\nurl = "{base}/{self.db}"\nmax-connections = 16\ndevelopment = true\n'
            # Ingest only: no model, and no fixed HTTP port to collide with a running service.
            '[pipeline]\nenabled = false\n[http]\nlisten = "127.0.0.1:0"\n')
        self.log = open(self.work / "cxrled.log", "w")
        # The store stage's per-instance timings (INFO) are read back by stages_ms().
        log_filter = "warn,cxr_led_daemon::ingest::store=info"
        self.proc = subprocess.Popen([self.binary, "run", "--config", str(config)], stdout=self.log,
                                     stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": log_filter})
        wait_echo(self.port, self.aec)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.log.close()
        subprocess.run(["psql", self.admin, "-qc", f"DROP DATABASE {self.db} WITH (FORCE)"], check=True)
        shutil.rmtree(self.spool, ignore_errors=True)


    def stages_ms(self):
        """Mean milliseconds per stored instance from the last run's log, from the
        end of the receive to the answer: seal (the rest of the structure walk,
        the identity and the file's fsync, with the duplicate lookup beside it),
        spool (rename, fsync folder), database commit (the instance row, its
        study and its audit event)."""
        marks = {"sealed": [], "spooled": [], "total": []}
        for line in (self.work / "cxrled.log").read_text().splitlines():
            try:
                fields = json.loads(line).get("fields", {})
            except ValueError:
                continue
            if fields.get("message") == "instance stored (cumulative timings)":
                for mark in marks:
                    marks[mark].append(duration_ms(fields[mark]))
        if not marks["total"]:
            return None
        mean = {mark: sum(values) / len(values) for mark, values in marks.items()}
        return {"seal": round(mean["sealed"], 2), "spool": round(mean["spooled"] - mean["sealed"], 2),
                "database": round(mean["total"] - mean["spooled"], 2)}


def duration_ms(text):
    """A Rust Duration's Debug text (e.g. 1.02ms, 224.8µs, 1.5s) in milliseconds."""
    for unit, scale in (("ns", 1e-6), ("µs", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    raise ValueError(f"not a duration: {text}")


class StoreScp:
    name = "storescp"
    aec = "STORESCP"

    def __init__(self, work):
        self.work = work

    def start(self):
        self.port = free_port()
        self.out = self.work / "storescp-out"
        self.out.mkdir()
        self.proc = subprocess.Popen(["storescp", "--fork", "-aet", self.aec, "--max-pdu", "65536",
                                      "-od", str(self.out), str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_echo(self.port, self.aec)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        shutil.rmtree(self.out, ignore_errors=True)


class Orthanc:
    name = "orthanc"
    aec = "ORTHANC"

    def __init__(self, work):
        self.work = work

    def start(self):
        self.port = free_port()
        self.storage = self.work / "orthanc-storage"
        self.storage.mkdir()
        config = self.work / "orthanc.json"
        config.write_text(json.dumps({
            "Name": "cxr-led-bench", "StorageDirectory": str(self.storage), "IndexDirectory": str(self.storage),
            "DicomAet": self.aec, "DicomPort": self.port, "HttpPort": free_port(), "RemoteAccessAllowed": False,
            "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "Plugins": [], "MaximumPduLength": 65536,
            "HttpServerEnabled": True, "StorageCompression": False, "DicomThreadsCount": 8,
        }))
        self.log = open(self.work / "orthanc.log", "w")
        self.proc = subprocess.Popen(["Orthanc", str(config)], stdout=self.log, stderr=subprocess.STDOUT)
        wait_echo(self.port, self.aec)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()
        shutil.rmtree(self.storage, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cxr-ledd", required=True)
    parser.add_argument("--small", type=int, default=400, help="copies of the 2 KB CR (CR1_6154)")
    parser.add_argument("--large", type=int, default=32, help="copies of the 7 MB chest CR (RG1_UNCR)")
    parser.add_argument("--no-orthanc", action="store_true")
    parser.add_argument("--associations", default="1,8,20", help="parallel association counts, comma-separated")
    parser.add_argument("--out", default=str(ROOT / "out" / "bench" / "ingest.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cxrled-bench-"))
    try:
        sets = {
            "small 2 KB CR": make_copies(FIXTURES / "CR1_6154.dcm", work / "small", args.small, "s"),
            "large 7 MB CR": make_copies(FIXTURES / "RG1_UNCR.dcm", work / "large", args.large, "l"),
        }
        receivers = [CxrLed(args.cxr_ledd, work), StoreScp(work)]
        if not args.no_orthanc and shutil.which("Orthanc"):
            receivers.append(Orthanc(work))
        results = []
        for set_name, files in sets.items():
            megabytes = sum(f.stat().st_size for f in files) / 1e6
            for parallel in [int(a) for a in args.associations.split(",")]:
                row = {"files": set_name, "n": len(files), "mb": round(megabytes, 1), "associations": parallel}
                for receiver in receivers:
                    # Every run starts with nothing left to write back (the copies made
                    # above, the receiver before): the disk is the one fsync waits on.
                    os.sync()
                    receiver.start()
                    try:
                        cpu_before = cpu_seconds(receiver.proc.pid)
                        elapsed = send(receiver.port, receiver.aec, files, parallel)
                        cpu = cpu_seconds(receiver.proc.pid) - cpu_before
                        if not isinstance(receiver, CxrLed):
                            # It fsyncs nothing: what making its files durable at the end of
                            # the run (one sync for all, not one per instance) costs.
                            flush_start = time.time()
                            os.sync()
                            flushed = time.time() - flush_start
                        # The parent of storescp --fork holds no data set.
                        peak = None if isinstance(receiver, StoreScp) else peak_rss_mib(receiver.proc)
                    finally:
                        receiver.stop()
                    row[receiver.name] = {"seconds": round(elapsed, 3), "instances_per_s": round(len(files) / elapsed, 1),
                                          "mb_per_s": round(megabytes / elapsed, 1), "peak_rss_mib": peak,
                                          "cpu_ms_per_instance": round(1000 * cpu / len(files), 2)}
                    if isinstance(receiver, CxrLed):
                        row[receiver.name]["stages_ms"] = receiver.stages_ms()
                    else:
                        row[receiver.name]["durable_instances_per_s"] = round(len(files) / (elapsed + flushed), 1)
                ceiling = fsync_ceiling(files, parallel, work / "fsync-loop")
                row["fsync_loop_instances_per_s"] = round(len(files) / ceiling, 1)
                results.append(row)
                print(json.dumps(row), file=sys.stderr)
        names = [r.name for r in receivers]
        header = f"{'files':<16}{'assoc':>6}" + "".join(f"{n + ' inst/s':>18}{'MB/s':>8}{'RSS MiB':>9}{'CPU ms':>8}" for n in names)
        header += "".join(f"{'cxr-led/' + n:>20}" for n in names[1:])
        header += f"{'storescp+sync inst/s':>22}{'fsync loop inst/s':>19}"
        print(header)
        for row in results:
            line = f"{row['files']:<16}{row['associations']:>6}"
            line += "".join(f"{row[n]['instances_per_s']:>18}{row[n]['mb_per_s']:>8}{str(row[n]['peak_rss_mib'] or '-'):>9}"
                            f"{row[n]['cpu_ms_per_instance']:>8}"
                            for n in names)
            line += "".join(f"{row['cxr-led']['instances_per_s'] / row[n]['instances_per_s']:>20.2f}" for n in names[1:])
            line += f"{row['storescp']['durable_instances_per_s']:>22}{row['fsync_loop_instances_per_s']:>19}"
            print(line)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"receivers": names, "cxr_ledd": args.cxr_ledd, "results": results}, indent=2))
        print(f"written {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
