# -*- coding: utf-8 -*-
# Copyright (c) gpuops.nvidia contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Stand-in for nvshare's nvshare-scheduler on GPU-less test nodes (written for gpuops.nvidia, not nvshare's code).

Built into `nvshare-scheduler` by this directory's Makefile. It keeps the interface the real scheduler has:
  * it runs in the foreground as root, logs `[NVSHARE][INFO]: ...` lines to stderr, and turns debug logging on
    when NVSHARE_DEBUG is set (to anything);
  * it creates /var/run/nvshare (mode 0711) and listens on /var/run/nvshare/scheduler.sock (mode 0722), the path
    nvshare compiles in, replacing a stale socket;
  * it speaks nvshare's wire format (one packed 537-byte message: type, pod name, pod namespace, id, data) for
    REGISTER (answered with SCHED_ON/SCHED_OFF and the client id), REQ_LOCK / LOCK_OK / DROP_LOCK /
    LOCK_RELEASED (first come, first served, one holder for at most TQ seconds), and nvsharectl's SET_TQ,
    SCHED_ON and SCHED_OFF; TQ starts at 30 s and anti-thrashing on.
STAND-IN-ONLY: what it received is written to /var/run/nvshare/standin-state.json (its pid, environment, TQ,
anti-thrash mode, how often nvsharectl changed them, each client with the pid and environment read through
SO_PEERCRED and /proc, and the lock grants), so tests can check what reached which scheduler.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type  # pylint: disable=invalid-name

import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time

SOCK_DIR = "/var/run/nvshare"
SOCK_PATH = SOCK_DIR + "/scheduler.sock"
STATE = SOCK_DIR + "/standin-state.json"
MESSAGE = struct.Struct("<B254s254sQ20s")
TYPES = {1: "REGISTER", 2: "SCHED_ON", 3: "SCHED_OFF", 4: "REQ_LOCK", 5: "LOCK_OK", 6: "DROP_LOCK",
         7: "LOCK_RELEASED", 8: "SET_TQ"}
CODES = dict((name, code) for code, name in TYPES.items())
UNREGISTERED = 0xF00DF00DF00DF00D
DEBUG = os.environ.get("NVSHARE_DEBUG") is not None


def log(level, text):
    sys.stderr.write("[NVSHARE][%s]: %s\n" % (level, text))
    sys.stderr.flush()


def environ_of(pid):
    try:
        with open("/proc/%d/environ" % pid, "rb") as handle:
            items = handle.read().split(b"\0")
    except (IOError, OSError):
        return {}
    env = {}
    for item in items:
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return env


class Scheduler:
    def __init__(self):
        self.tq = 30
        self.on = True
        self.clients = {}  # socket -> {"id", "pid", ...}
        self.requests = []  # sockets, FCFS; the head holds the lock
        self.lock_held = False
        self.granted_at = 0.0
        self.drop_sent = False
        self.record = {"pid": os.getpid(), "started": time.time(),
                       "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "debug": DEBUG,
                       "tq": self.tq, "anti_thrash": "on", "set_tq_count": 0, "sched_on_off_count": 0,
                       "lock_grants": 0, "clients": []}

    def save(self):
        self.record.update(tq=self.tq, anti_thrash="on" if self.on else "off")
        tmp = STATE + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(self.record, handle, indent=1, sort_keys=True)
        os.rename(tmp, STATE)

    def send(self, conn, kind, data=b"", ident=7331):
        try:
            conn.sendall(MESSAGE.pack(CODES[kind], b"", b"", ident, data))
        except OSError:
            return False
        info = self.clients.get(conn)
        registered = info and info["id"] != UNREGISTERED
        log("INFO", "Sent %s to client %s" % (kind, "%016x" % info["id"] if registered else "<UNREGISTERED>"))
        return True

    def drop(self, conn):
        info = self.clients.pop(conn, None)
        if info is not None:
            log("INFO", "Removing client %s" % ("%016x" % info["id"] if info["id"] != UNREGISTERED
                                                else "<UNREGISTERED>"))
            for entry in self.record["clients"]:
                if entry["id"] == "%016x" % info["id"]:
                    entry["connected"] = False
        if self.requests and self.requests[0] is conn:
            self.lock_held = False
        self.requests = [c for c in self.requests if c is not conn]
        conn.close()
        self.save()

    def schedule(self):
        while self.requests and not self.lock_held:
            head = self.requests[0]
            if self.send(head, "LOCK_OK"):
                self.lock_held, self.granted_at, self.drop_sent = True, time.time(), False
                self.record["lock_grants"] += 1
                self.save()
            else:
                self.drop(head)

    def register(self, conn):
        pid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0]
        ident = random.getrandbits(64)
        self.clients[conn]["id"] = ident
        env = environ_of(pid)
        self.record["clients"].append({"id": "%016x" % ident, "pid": pid, "connected": True,
                                       "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES"),
                                       "ld_preload": env.get("LD_PRELOAD"),
                                       "single_oversub": env.get("NVSHARE_ENABLE_SINGLE_OVERSUB")})
        log("INFO", "Registered client %016x with Pod name = none, Pod namespace = none" % ident)
        if not self.send(conn, "SCHED_ON" if self.on else "SCHED_OFF", b"%016x" % ident):
            self.drop(conn)
            return
        self.save()

    def handle(self, conn, kind, data):
        info = self.clients[conn]
        who = "%016x" % info["id"] if info["id"] != UNREGISTERED else "<UNREGISTERED>"
        log("INFO", "Received %s from %s" % (kind, who))
        if kind == "REGISTER":
            self.register(conn)
        elif kind == "SET_TQ":
            try:
                self.tq = int(data.split(b"\0", 1)[0], 0)
                self.record["set_tq_count"] += 1
                self.granted_at = time.time()
                log("INFO", "New TQ = %d" % self.tq)
            except ValueError:
                log("INFO", "Failed to parse new TQ from message")
            self.save()
        elif kind in ("SCHED_ON", "SCHED_OFF"):
            self.record["sched_on_off_count"] += 1
            wanted = kind == "SCHED_ON"
            if wanted != self.on:
                self.on = wanted
                log("INFO", "Scheduler turned %s, broadcasting it..." % ("ON" if wanted else "OFF"))
                for other, other_info in list(self.clients.items()):
                    if other_info["id"] != UNREGISTERED:
                        self.send(other, kind)
                if not wanted:
                    self.requests, self.lock_held = [], False
            self.save()
        elif kind == "REQ_LOCK":
            if info["id"] == UNREGISTERED:
                self.drop(conn)
            elif self.on and conn not in self.requests:
                self.requests.append(conn)
                self.schedule()
        elif kind == "LOCK_RELEASED":
            if info["id"] == UNREGISTERED:
                self.drop(conn)
            elif self.on:
                if self.requests and self.requests[0] is conn:
                    self.lock_held = False
                self.requests = [c for c in self.requests if c is not conn]
                self.schedule()

    def tick(self):
        if self.on and self.lock_held and not self.drop_sent and time.time() - self.granted_at >= self.tq:
            head = self.requests[0]
            if self.send(head, "DROP_LOCK", ident=1337):
                self.drop_sent = True
            else:
                self.drop(head)
                self.schedule()


def main():
    log("INFO", "nvshare-scheduler started in %s mode" % ("debug" if DEBUG else "normal"))
    try:
        os.mkdir(SOCK_DIR, 0o711)
    except FileExistsError:
        pass
    except OSError:
        log("FATAL", "Could not create scheduler socket directory %s/" % SOCK_DIR)
        return 1
    os.chmod(SOCK_DIR, 0o711)
    try:
        os.unlink(SOCK_PATH)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(SOCK_PATH)
    listener.listen(32)
    os.chmod(SOCK_PATH, 0o722)
    scheduler = Scheduler()
    scheduler.save()
    signal.signal(signal.SIGTERM, lambda *_args: sys.exit(0))
    log("INFO", "nvshare-scheduler listening on %s" % SOCK_PATH)
    while True:
        readable, _w, _x = select.select([listener] + list(scheduler.clients), [], [], 0.5)
        for conn in readable:
            if conn is listener:
                client, _addr = listener.accept()
                scheduler.clients[client] = {"id": UNREGISTERED}
                continue
            try:
                raw = conn.recv(MESSAGE.size, socket.MSG_WAITALL)
            except OSError:
                raw = b""
            if len(raw) != MESSAGE.size:
                scheduler.drop(conn)
                scheduler.schedule()
                continue
            kind, _name, _namespace, _ident, data = MESSAGE.unpack(raw)
            if kind not in TYPES:
                log("INFO", "Received message of unknown type %d" % kind)
                continue
            scheduler.handle(conn, TYPES[kind], data)
        scheduler.tick()


if __name__ == "__main__":
    sys.exit(main())
