// SPDX-License-Identifier: MIT
import MiniVMM

MiniVMMCommand.main()
