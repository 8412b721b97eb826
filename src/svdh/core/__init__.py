"""Shared rules every stage uses: errors, scoring, io, preprocessing. Imports nothing else of svdh."""
