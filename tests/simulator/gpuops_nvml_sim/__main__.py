"""Command line for the NVML simulator's state: create GPUs, reboot, reset, processes, faults."""

from __future__ import annotations

import argparse
import json
import sys

from . import state as simstate


def _parser():
    parser = argparse.ArgumentParser(prog="python3 -m gpuops_nvml_sim", description=__doc__)
    parser.add_argument("--state", default=None,
                        help="state file (default: $%s or %s)" % (simstate.STATE_ENV, simstate.DEFAULT_STATE_PATH))
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="write a new state with the given GPUs")
    create.add_argument("--gpus", required=True, help="MODEL[:COUNT][,MODEL[:COUNT]...]; models: "
                        + ", ".join(sorted(simstate.models.MODELS)))
    create.add_argument("--driver-version", default="580.159.04")
    create.add_argument("--cuda-driver-version", type=int, default=13000)
    create.add_argument("--force", action="store_true", help="replace an existing state")
    create.add_argument("--nvswitch", action="store_true",
                        help="the GPUs sit on one HGX board behind NVSwitches: fabric registered, every NVLink up")
    create.add_argument("--clique-id", type=int, default=simstate.DEFAULT_CLIQUE_ID,
                        help="fabric clique id on an NVSwitch board (default %(default)s)")
    create.add_argument("--cluster-uuid", default=None,
                        help="fabric cluster UUID on an NVSwitch board (default: derived from the node)")
    create.add_argument("--absent-function", action="append", default=[], metavar="NVML_FUNCTION",
                        help="an NVML entry point the driver lacks (FUNCTION_NOT_FOUND); repeatable")
    commands.add_parser("show", help="print the state as JSON")
    commands.add_parser("reboot", help="drop what a node reboot drops")
    reset = commands.add_parser("reset", help="reset GPUs as `nvidia-smi -r -i` does")
    reset.add_argument("bus_ids", nargs="*", help="PCI bus ids (default: every GPU)")
    process = commands.add_parser("process", help="simulated compute processes")
    process_commands = process.add_subparsers(dest="action", required=True)
    add = process_commands.add_parser("add")
    add.add_argument("--gpu", required=True, help="index, UUID or PCI bus id")
    add.add_argument("--pid", required=True, type=int)
    add.add_argument("--name", required=True)
    add.add_argument("--memory-mib", type=int, default=256)
    add.add_argument("--gpu-instance-id", type=int)
    add.add_argument("--compute-instance-id", type=int)
    remove = process_commands.add_parser("remove")
    remove.add_argument("--pid", required=True, type=int)
    fault = commands.add_parser("fault", help="fail the Nth call of an NVML function")
    fault_commands = fault.add_subparsers(dest="action", required=True)
    fault_add = fault_commands.add_parser("add")
    fault_add.add_argument("function")
    fault_add.add_argument("--call", type=int, default=1)
    fault_add.add_argument("--code", type=int, required=True)
    fault_commands.add_parser("clear")
    fabric = commands.add_parser("fabric", help="change what the fabric manager registered for GPUs")
    fabric.add_argument("--gpu", action="append", default=[], help="index, UUID or PCI bus id (default: every GPU)")
    fabric.add_argument("--state", dest="fabric_state", choices=sorted(simstate.FABRIC_STATES),
                        help="registration state")
    fabric.add_argument("--status", type=int, help="the probe's nvmlReturn_t (0 success)")
    fabric.add_argument("--clique-id", type=int)
    fabric.add_argument("--cluster-uuid")
    nvlink = commands.add_parser("nvlink", help="bring NVLink links up or down")
    nvlink.add_argument("action", choices=["up", "down"])
    nvlink.add_argument("--gpu", action="append", default=[], help="index, UUID or PCI bus id (default: every GPU)")
    nvlink.add_argument("--link", action="append", type=int, default=[], help="link number (default: every link)")
    symbol = commands.add_parser("symbol", help="make the driver lack an NVML entry point, or have it again")
    symbol.add_argument("action", choices=["remove", "restore"])
    symbol.add_argument("function")
    setting = commands.add_parser("set", help="set a top-level flag (driver_loaded, library_present, require_root)")
    setting.add_argument("key", choices=["driver_loaded", "library_present", "require_root"])
    setting.add_argument("value", choices=["true", "false"])
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    path = args.state or simstate.configured_state_path() or simstate.DEFAULT_STATE_PATH
    store = simstate.StateStore(path)
    try:
        if args.command == "create":
            names = simstate.parse_gpu_spec(args.gpus)
            store.create(simstate.new_state(names, args.driver_version, args.cuda_driver_version,
                                            nvswitch=args.nvswitch, clique_id=args.clique_id,
                                            cluster_uuid=args.cluster_uuid, absent_functions=args.absent_function),
                         force=args.force)
            print("created %d simulated GPU(s) in %s" % (len(names), path))
        elif args.command == "show":
            json.dump(store.read(), sys.stdout, indent=1, sort_keys=True)
            print()
        else:
            with store.transaction() as data:
                _mutate(args, data)
    except (simstate.SimulatorError, ValueError) as exc:
        print("gpuops_nvml_sim: %s" % exc, file=sys.stderr)
        return 1
    return 0


def _mutate(args, data):
    if args.command == "reboot":
        simstate.reboot(data)
    elif args.command == "reset":
        for gpu in simstate.reset_gpus(data, args.bus_ids):
            print("GPU %s was reset." % gpu["bus_id"])
    elif args.command == "process" and args.action == "add":
        simstate.add_process(data, args.gpu, args.pid, args.name, args.memory_mib,
                             args.gpu_instance_id, args.compute_instance_id)
    elif args.command == "process":
        simstate.remove_process(data, args.pid)
    elif args.command == "fault" and args.action == "add":
        simstate.add_fault(data, args.function, args.call, args.code)
    elif args.command == "fault":
        data["faults"] = []
    elif args.command == "set":
        data[args.key] = args.value == "true"
    elif args.command == "fabric":
        simstate.set_fabric(data, args.gpu, args.fabric_state, args.status, args.clique_id, args.cluster_uuid)
    elif args.command == "nvlink":
        simstate.set_nvlink(data, args.gpu, args.link, args.action == "up")
    elif args.command == "symbol":
        simstate.set_function_absent(data, args.function, args.action == "remove")


if __name__ == "__main__":
    sys.exit(main())
