// SPDX-License-Identifier: MIT
public import KVMBridge
