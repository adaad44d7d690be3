// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Same-node sockmap acceleration (issue 10 section 3). Placeholder: filled by the sockmap work.
 */
