"""The synthesis job: input partitions, the filter stage, the scheduler and the job itself."""
