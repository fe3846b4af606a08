#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Formats the Swift sources in place with the committed .swift-format (the configuration .ci/run lints with).
set -euo pipefail
cd "$(dirname "$0")/.."
swift format format --in-place --parallel --recursive --configuration .swift-format Sources Tests Package.swift
