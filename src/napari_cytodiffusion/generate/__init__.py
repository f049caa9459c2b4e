"""Class-conditional generation of synthetic cells."""
