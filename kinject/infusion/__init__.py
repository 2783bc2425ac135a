"""The infusion stage (conf group `infusion`): formats, the exposure schedule, the spliced training stream."""
