"""The `.rec` grammar (rec.lark), shipped as package data of `recc.grammar`."""
