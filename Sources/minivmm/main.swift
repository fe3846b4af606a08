// SPDX-License-Identifier: MIT
import MiniVMM
