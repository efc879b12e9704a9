"""The PIM SRE Lab operator: custom resources of group `pim-sre.lab` and their reconcilers.

Nothing is defined here on purpose: an editable install made before this file existed maps the
package as a namespace package and never runs it. The API group's constants live in
`pimlab_operator.schema`; the table of kinds is `pimlab_operator.kinds`.
"""
