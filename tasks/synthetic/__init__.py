"""Data sets the demo and the tests replay: the 2013 NYC flights, seeded synthetic card
transactions and machine sensors. Generators only: no clocks, no I/O."""
