/*
 * Copyright (c) gpuops.nvidia contributors
 * GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * Stand-in for nvshare's libnvshare.so on GPU-less test nodes (written for gpuops.nvidia, not nvshare's code).
 * A real shared object that does nothing: preloading it (LD_PRELOAD or /etc/ld.so.preload) must be harmless to
 * every process. The stand-in CUDA client (tests/standins/nvshare-client) checks that it is mapped, then talks to
 * the scheduler the way the real library does from inside a CUDA program.
 */
const char gpuops_nvshare_standin[] = "libnvshare.so stand-in (gpuops.nvidia tests)";
