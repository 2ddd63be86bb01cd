# Benchmark callback (bench/ only, not part of the collection): counts, per host, the tasks that ran and the
# module runs that reached the node, and the wall time of each task; writes JSON to $GPUOPS_BENCH_OUT at the end.
import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: gpuops_bench
type: aggregate
short_description: per-host task and module-run counts and per-task wall time (gpuops bench/)
description: Writes a JSON summary to $GPUOPS_BENCH_OUT.
"""

# Actions that run on the controller only (no module shipped to the node).
LOCAL_ACTIONS = {
    "set_fact", "debug", "assert", "fail", "include_role", "include_tasks", "import_role", "import_tasks",
    "meta", "include_vars", "add_host", "group_by", "pause", "validate_argument_spec", "gather_facts_none",
}


def short(action):
    return (action or "").rsplit(".", 1)[-1]


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "gpuops_bench"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.hosts = {}
        self.tasks = []  # [name, action, start]
        self.t0 = time.monotonic()

    def _host(self, name):
        return self.hosts.setdefault(name, {"tasks": 0, "skipped": 0, "module_runs": 0, "changed": 0,
                                            "failed": 0, "changed_tasks": [], "modules": {}})

    def _task_start(self, task):
        self.tasks.append([task.get_name(), short(task.action), time.monotonic()])

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task_start(task)

    def v2_playbook_on_handler_task_start(self, task):
        self._task_start(task)

    def _result(self, result, status):
        task = result._task
        h = self._host(result._host.get_name())
        res = result._result
        items = res.get("results") if isinstance(res.get("results"), list) else None
        h["tasks"] += 1
        if status == "skipped":
            h["skipped"] += 1
            return
        action = short(task.action)
        delegated = (task.delegate_to or "") in ("localhost", "127.0.0.1")
        if action not in LOCAL_ACTIONS and not delegated:
            n = len([i for i in items if not i.get("skipped")]) if items is not None else 1
            h["module_runs"] += n
            h["modules"][action] = h["modules"].get(action, 0) + n
        if status == "failed":
            h["failed"] += 1
        if res.get("changed"):
            h["changed"] += 1
            h["changed_tasks"].append(task.get_name())

    def v2_runner_on_ok(self, result):
        self._result(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._result(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._result(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._result(result, "failed")

    def v2_playbook_on_stats(self, stats):
        end = time.monotonic()
        durations = []
        for i, (name, action, start) in enumerate(self.tasks):
            stop = self.tasks[i + 1][2] if i + 1 < len(self.tasks) else end
            durations.append({"task": name, "action": action, "s": round(stop - start, 3)})
        out = os.environ.get("GPUOPS_BENCH_OUT")
        if out:
            with open(out, "w") as f:
                json.dump({"hosts": self.hosts, "tasks": durations, "wall_s": round(end - self.t0, 3)}, f, indent=1)
