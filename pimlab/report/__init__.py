"""`pimlab report drill NAME`: a Drill's evidence as one self-contained HTML page, a Markdown
file and PNG plots, each figure with its source (an object's field or the PromQL query)."""
