// SPDX-License-Identifier: MIT
internal import CKVM
