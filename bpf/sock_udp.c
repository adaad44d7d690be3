// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * UDP service translation and address transparency (issue 10 section 1). Placeholder: filled by
 * the UDP work.
 */
