"""PowerShell and Hyper-V outputs the tests replay, each with where it comes from.

"Recorded" means captured on a real Windows host by someone else and
published (an issue, a project's tests); those are copied byte for byte
where the source gives bytes, and as printed where it gives console text.
"Built" means written here from documented behaviour, since no Windows host
was at hand: the JSON our own scripts print has the shape we choose (strings
for enums, as Vagrant does), so only what ConvertTo-Json does with it is
assumed (one object unwrapped from its array, nulls, numbers).
"""

from __future__ import annotations

# Recorded: pywinrm 0.5.0 winrm/tests/test_session.py (test_decode_clixml_error): stderr of a
# run_ps("fake cmdlet") on Windows, module-loading progress records first, then the error.
CLIXML_UNKNOWN_COMMAND = '#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04"><Obj S="progress" RefId="0"><TN RefId="0"><T>System.Management.Automation.PSCustomObject</T><T>System.Object</T></TN><MS><I64 N="SourceId">1</I64><PR N="Record"><AV>Preparing modules for first use.</AV><AI>0</AI><Nil /><PI>-1</PI><PC>-1</PC><T>Completed</T><SR>-1</SR><SD> </SD></PR></MS></Obj><Obj S="progress" RefId="1"><TNRef RefId="0" /><MS><I64 N="SourceId">1</I64><PR N="Record"><AV>Preparing modules for first use.</AV><AI>0</AI><Nil /><PI>-1</PI><PC>-1</PC><T>Completed</T><SR>-1</SR><SD> </SD></PR></MS></Obj><S S="Error">fake : The term \'fake\' is not recognized as the name of a cmdlet, function, script file, or operable program. Check _x000D__x000A_</S><S S="Error">the spelling of the name, or if a path was included, verify that the path is correct and try again._x000D__x000A_</S><S S="Error">At line:1 char:1_x000D__x000A_</S><S S="Error">+ fake cmdlet_x000D__x000A_</S><S S="Error">+ ~~~~_x000D__x000A_</S><S S="Error">    + CategoryInfo          : ObjectNotFound: (fake:String) [], CommandNotFoundException_x000D__x000A_</S><S S="Error">    + FullyQualifiedErrorId : CommandNotFoundException_x000D__x000A_</S><S S="Error"> _x000D__x000A_</S></Objs>'

# Recorded: pywinrm 0.5.0 winrm/tests/test_session.py (test_decode_clixml_no_errors): a run
# that succeeded, with nothing on stderr but progress.
CLIXML_PROGRESS_ONLY = '#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04"><Obj S="progress" RefId="0"><TN RefId="0"><T>System.Management.Automation.PSCustomObject</T><T>System.Object</T></TN><MS><I64 N="SourceId">1</I64><PR N="Record"><AV>Preparing modules for first use.</AV><AI>0</AI><Nil /><PI>-1</PI><PC>-1</PC><T>Completed</T><SR>-1</SR><SD> </SD></PR></MS></Obj><Obj S="progress" RefId="1"><TNRef RefId="0" /><MS><I64 N="SourceId">1</I64><PR N="Record"><AV>Preparing modules for first use.</AV><AI>0</AI><Nil /><PI>-1</PI><PC>-1</PC><T>Completed</T><SR>-1</SR><SD> </SD></PR></MS></Obj></Objs>'

# Recorded: pywinrm 0.5.0 winrm/tests/conftest.py (get_ps_output_response), the two base64
# stderr streams of `Write-Error "Error"` over WinRM, decoded; the console wrapped
# CategoryInfo and FullyQualifiedErrorId mid-word.
CLIXML_WRITE_ERROR = (
    "#< CLIXML\r\n"
    '<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04"><S S="Error">Write-Error "Error" : Error_x000D__x000A_</S><S S="Error">    + CategoryInfo          : NotSpecified: (:) [Write-Error], WriteErrorExcep _x000D__x000A_</S><S S="Error">   tion_x000D__x000A_</S><S S="Error">    + FullyQualifiedErrorId : Microsoft.PowerShell.Commands.WriteErrorExceptio _x000D__x000A_</S><S S="Error">   n_x000D__x000A_</S><S S="Error"> _x000D__x000A_</S></Objs>'
)

# Recorded: kubernetes/minikube#8970, libmachine's log of `powershell.exe -NoProfile
# -NonInteractive ( Hyper-V\Get-VM minikube ).state` (stderr as text, no CLIXML) for a VM
# that does not exist.
GET_VM_NOT_FOUND = (
    'Hyper-V\\Get-VM : Hyper-V was unable to find a virtual machine with name "minikube".\r\n'
    "At line:1 char:3\r\n"
    "+ ( Hyper-V\\Get-VM minikube ).state\r\n"
    "+   ~~~~~~~~~~~~~~~~~~~~~~~\r\n"
    "    + CategoryInfo          : InvalidArgument: (minikube:String) [Get-VM], VirtualizationException\r\n"
    "    + FullyQualifiedErrorId : InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM\r\n"
    "\r\n"
)

# Recorded: seflerZ/oneclick-gpu-pv#4, Windows 11 without the Hyper-V feature (as the user's
# console printed it: Get-VM is not a known command).
GET_VM_NOT_A_COMMAND = (
    "Get-VM : Term 'Get-VM' not recognized as a cmdlet, function, executable program, or script file name. \r\n"
    "Check the spelling of the name or verify that the path is included and correct, then try again.\r\n"
    "\r\n"
    "In C:\\Users\\marietto\\Downloads\\oneclick-gpu-pv-main\\oneclick-gpu-pv-main\\win-gpu-pv.ps1:13 car:13\r\n"
    '+ $vmobject = Get-VM | Out-GridView -Title "Select VM to setup GPU-P" - ...\r\n'
    "+             ~~~~~~\r\n"
    "    + CategoryInfo          : ObjectNotFound: (Get-VM:String) [], ParentContainsErrorRecordException\r\n"
    "    + FullyQualifiedErrorId : CommandNotFoundException\r\n"
)

# Recorded: pluralsight/PS-AutoLab-Env#133, Set-VMFirmware on a VM New-VM had not made.
SET_VMFIRMWARE_NOT_FOUND = (
    'Set-VMFirmware : Hyper-V was unable to find a virtual machine with name "N1".\r\n'
    "At C:\\Program Files\\WindowsPowerShell\\Modules\\Lability\\0.12.4\\DSCResources\\xHyper-V\\DSCResources\\MSFT_xVMHyperV\\MSFT_xV\r\n"
    "MHyperV.psm1:451 char:21\r\n"
    "+ ...                    Set-VMFirmware -VMName $Name -EnableSecureBoot Off\r\n"
    "+                        ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~\r\n"
    "    + CategoryInfo          : ObjectNotFound: (:) [Set-VMFirmware], VirtualizationException\r\n"
    "    + FullyQualifiedErrorId : ObjectNotFound,Microsoft.HyperV.PowerShell.Commands.SetVMFirmware\r\n"
)
