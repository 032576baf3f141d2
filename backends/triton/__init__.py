"""Triton backend: kernel generation and ahead-of-time compilation checks. Importing this
package does not import Triton; import a submodule such as ``recc.backends.triton.aot`` when
Triton itself is needed."""
