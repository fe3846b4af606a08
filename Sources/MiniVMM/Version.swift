// SPDX-License-Identifier: MIT

/// minivmm's version: one place for `minivmm --version` and the QMP greeting's `package`.
public enum MiniVMMVersion {
    public static let number = "0.5"
}
