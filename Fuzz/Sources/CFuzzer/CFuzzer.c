// SPDX-License-Identifier: MIT
// Empty: the module only exports CFuzzer.h (LLVMFuzzerRunDriver comes from libFuzzer at link time).
#include "CFuzzer.h"
