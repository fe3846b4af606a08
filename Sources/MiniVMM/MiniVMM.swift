// SPDX-License-Identifier: MIT
import KVMBridge
